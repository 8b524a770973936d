"""The ``dynamickv`` command line.

Errors the user can fix (unknown method, bad budget, missing file, unsupported model, ...) print
one line and exit with status 2; set ``DYNAMICKV_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import DynamicKVError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Task-adaptive KV-cache compression (DynamicKV, WindowKV and baselines) for transformers models.",
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="embedded name, HF id, local dir or .gguf file")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... or auto (layers spread over all GPUs)")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]


def _dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


@app.command()
def methods(
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON list: parameters, paper, head_adaptive")
    ] = False,
) -> None:
    """List the compression methods."""
    from .methods import METHODS, describe_methods

    if as_json:
        typer.echo(json.dumps(describe_methods()))
        return
    width = max(len(n) for n in METHODS)
    for name, cls in METHODS.items():
        typer.echo(f"{name:<{width}}  {cls.summary}")


@app.command()
def generate(
    context_file: Annotated[Path, typer.Option("--context-file", "-c", help="text file with the context")],
    question: Annotated[str, typer.Option("--question", "-q", help="question about the context")],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[str, typer.Option(help="see `dynamickv methods`")] = "dynamickv",
    budget: Annotated[str, typer.Option(help="tokens per layer (128) or a ratio (0.1, 10%)")] = "128",
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    attn: Annotated[str, typer.Option(help="attention implementation: sdpa or eager")] = "sdpa",
) -> None:
    """Answer QUESTION about the text in CONTEXT_FILE from a compressed KV cache."""
    from .budget import parse_budget
    from .methods import get_method

    parsed = parse_budget(budget)  # fail fast, before loading a model
    if parsed.tokens is not None:
        get_method(method).validate(parsed.tokens, num_layers=10**6)
    else:
        get_method(method)
    if not context_file.is_file():
        raise InputError(f"context file not found: {context_file}")
    context = context_file.read_text(encoding="utf-8", errors="replace")
    if not context.strip():
        raise InputError(f"context file is empty: {context_file}")

    from .models import load_model
    from .report import answer_report

    mdl, tok = load_model(model, dtype=_dtype(dtype), device=device, attn_implementation=attn)
    result = answer_report(mdl, tok, context, question, method, budget, max_new_tokens)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(result["answer"].strip())
        typer.echo(
            f"[{method} B={budget}] prompt {result['prompt_tokens']} tokens, kept/layer "
            f"{min(result['kept_tokens_per_layer'])}-{max(result['kept_tokens_per_layer'])}, "
            f"KV {result['kv_bytes'] / 2**20:.2f} MiB of {result['full_kv_bytes'] / 2**20:.2f} MiB, "
            f"prefill {result['prefill_seconds']:.2f}s",
            err=True,
        )


@app.command()
def demo(
    model: ModelOpt = "smollm2-135m",
    budget: Annotated[str, typer.Option(help="tokens per layer")] = "128",
    context_tokens: Annotated[int, typer.Option(help="approximate haystack length")] = 2000,
    methods_: Annotated[str, typer.Option("--methods", help="comma-separated")] = (
        "fullkv,streamingllm,h2o,snapkv,pyramidkv,dynamickv,windowkv"
    ),
) -> None:
    """The main job on the embedded model: a needle in a ~2k-token haystack, every method at B."""
    from rich.console import Console
    from rich.table import Table

    from .models import load_model
    from .report import answer_report, needle_prompt

    console = Console()
    mdl, tok = load_model(model)
    context, question, needle_answer = needle_prompt(tok, context_tokens)
    table = Table(title=f"needle at 50% of ~{context_tokens} tokens, {model}, B={budget}")
    for col in ("method", "answer", "found", "kept/layer (min-max)", "KV MiB", "% of full", "prefill s"):
        table.add_column(col)
    for name in [m.strip() for m in methods_.split(",") if m.strip()]:
        r = answer_report(mdl, tok, context, question, name, budget, 24)
        kept = r["kept_tokens_per_layer"]
        table.add_row(
            name,
            r["answer"].strip().replace("\n", " ")[:60],
            "yes" if needle_answer.lower() in r["answer"].lower() else "no",
            f"{min(kept)}-{max(kept)}",
            f"{r['kv_bytes'] / 2**20:.2f}",
            f"{100 * r['kv_bytes'] / r['full_kv_bytes']:.1f}",
            f"{r['prefill_seconds']:.2f}",
        )
    console.print(table)


def _register_optional() -> None:
    """Sub-commands that need the evaluation extra register themselves if their modules exist."""
    for module in ("dynamickv.eval.cli", "dynamickv.bench", "dynamickv.analysis.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:  # the module is absent or its optional extra is not installed
            continue
        mod.register(app)


_register_optional()


def main() -> None:
    """Entry point: run the app, turning library errors into one clean line."""
    try:
        app(standalone_mode=False)
    except DynamicKVError as e:
        if os.environ.get("DYNAMICKV_DEBUG"):
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()

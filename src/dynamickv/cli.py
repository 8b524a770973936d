"""The ``dynamickv`` command line.

Errors the user can fix (unknown method, bad budget, missing file, unsupported model, a usage error
of the command line, ...) print one line and exit with status 2; Ctrl-C exits with 130. ``--debug``
(before the command) or ``DYNAMICKV_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import CommandInterrupted, DynamicKVError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Task-adaptive KV-cache compression (DynamicKV, WindowKV and baselines) for transformers models.",
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="embedded name, HF id, local dir or .gguf file")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... or auto (layers spread over all GPUs)")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
AttnOpt = Annotated[str, typer.Option(help="attention implementation: sdpa or eager")]


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the Python traceback of an error (or DYNAMICKV_DEBUG=1)")
    ] = False,
) -> None:
    """Task-adaptive KV-cache compression (DynamicKV, WindowKV and baselines) for transformers models."""
    if debug:
        os.environ["DYNAMICKV_DEBUG"] = "1"


def _dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name.strip().lower()
        ]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


@app.command()
def methods(
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON list: parameters, paper, head_adaptive")
    ] = False,
) -> None:
    """List the compression methods."""
    from .catalog import CATALOG  # the registry as data: listing it needs no torch

    if as_json:
        typer.echo(json.dumps(CATALOG))
        return
    width = max(len(m["name"]) for m in CATALOG)
    for m in CATALOG:
        mark = " (recommended)" if m["recommended"] else ""
        typer.echo(f"{m['name']:<{width}}  {m['summary']}{mark}")


@app.command()
def generate(
    context_file: Annotated[
        Path, typer.Option("--context-file", "-c", help="text file with the context (- reads stdin)")
    ],
    question: Annotated[str, typer.Option("--question", "-q", help="question about the context")],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[
        str, typer.Option(help="see `dynamickv methods` (default: the recommended one)")
    ] = "dynamickv-auto",
    budget: Annotated[str, typer.Option(help="tokens per layer (128) or a ratio (0.1, 10%)")] = "128",
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    attn: AttnOpt = "sdpa",
    truncate: Annotated[
        str | None,
        typer.Option(
            help="a prompt longer than the model's context is refused; 'middle' cuts the middle of the "
            "context instead (LongBench's rule: its first and last halves are kept)"
        ),
    ] = None,
) -> None:
    """Answer QUESTION about the text in CONTEXT_FILE from a compressed KV cache."""
    from .budget import parse_budget
    from .methods import get_method
    from .options import check_attention, check_device, check_positive, check_truncate, read_context

    parsed = parse_budget(budget)  # fail fast, before loading a model
    if parsed.tokens is not None:
        get_method(method).validate(parsed.tokens, num_layers=10**6)
    else:
        get_method(method)
    check_positive(max_new_tokens, "--max-new-tokens")
    if not question.strip():
        raise InputError("--question is empty: give the question to answer about the context")
    attn, device, truncate = check_attention(attn), check_device(device), check_truncate(truncate)
    torch_dtype = _dtype(dtype)
    context = read_context(context_file)

    from .models import load_model
    from .report import answer_report

    mdl, tok = load_model(model, dtype=torch_dtype, device=device, attn_implementation=attn)
    result = answer_report(mdl, tok, context, question, method, budget, max_new_tokens, truncate=truncate)
    if result.get("truncated_from"):
        typer.echo(
            f"note: the prompt was cut in the middle from {result['truncated_from']} to "
            f"{result['prompt_tokens']} tokens to fit the model's context",
            err=True,
        )
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


@app.command(
    short_help="The main job: a needle in a ~2k-token haystack, every method at B "
    "(the uncompressed reference, then the recommended one)."
)
def demo(
    model: ModelOpt = "smollm2-135m",
    budget: Annotated[str, typer.Option(help="tokens per layer (128) or a ratio (0.1, 10%)")] = "128",
    context_tokens: Annotated[int, typer.Option(help="approximate haystack length")] = 2000,
    methods_: Annotated[str, typer.Option("--methods", help="comma-separated")] = (
        "fullkv,dynamickv-auto,snapkv-decay,dynamickv-preference,snapkv-forward,dynamickv-robust,streamingllm,h2o,"
        "snapkv,pyramidkv,dynamickv,windowkv,cake"
    ),
) -> None:
    """The main job on the embedded model: a needle in a ~2k-token haystack, every method at B (the
    recommended method, marked *, first after the uncompressed reference)."""
    from rich.console import Console
    from rich.table import Table

    from .budget import parse_budget
    from .methods import RECOMMENDED, get_method
    from .options import check_positive

    names = [m.strip() for m in methods_.split(",") if m.strip()]
    if not names:
        raise InputError("--methods is empty")
    parsed = parse_budget(budget)  # every check before the model loads
    for name in names:
        get_method(name).validate(parsed.tokens or 10**9, num_layers=10**6)
    check_positive(context_tokens, "--context-tokens")

    from .models import load_model
    from .report import answer_report, needle_prompt

    # piped or redirected output gets a width that keeps each answer on one line
    console = Console(width=None if sys.stdout.isatty() else 150)
    from .limits import context_length

    mdl, tok = load_model(model)
    limit = context_length(mdl)
    if limit is not None and context_tokens + _DEMO_ROOM > limit:  # before building a haystack
        raise InputError(
            f"--context-tokens {context_tokens} does not fit {model}'s {limit} positions with the question "
            f"and the answer: use at most {limit - _DEMO_ROOM}"
        )
    context, question, needle_answer = needle_prompt(tok, context_tokens)
    table = Table(
        title=f"needle at 50% of ~{context_tokens} tokens, {model}, B={budget}",
        caption=f"* {RECOMMENDED}: the recommended method" if RECOMMENDED in names else None,
    )
    for col in ("method", "answer", "found", "kept/layer (min-max)", "KV MiB", "% of full", "prefill s"):
        table.add_column(col)
    for name in names:
        r = answer_report(mdl, tok, context, question, name, budget, 24)
        kept = r["kept_tokens_per_layer"]
        label = f"{name} *" if name == RECOMMENDED else name
        if "allocation" in r:  # dynamickv-auto: which branch this model's family gets
            label += f" ({r['allocation']})"
        table.add_row(
            label,
            r["answer"].strip().replace("\n", " ")[:60],
            "yes" if needle_answer.lower() in r["answer"].lower() else "no",
            f"{min(kept)}-{max(kept)}",
            f"{r['kv_bytes'] / 2**20:.2f}",
            f"{100 * r['kv_bytes'] / r['full_kv_bytes']:.1f}",
            f"{r['prefill_seconds']:.2f}",
        )
    console.print(table)


#: Positions ``demo`` keeps free beside its haystack: the chat template, the question and a 24-token answer.
_DEMO_ROOM = 256


def _register_optional() -> None:
    """Sub-commands that need the evaluation extra register themselves if their modules exist."""
    for module in ("dynamickv.eval.cli", "dynamickv.bench_cli", "dynamickv.analysis.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:  # the module is absent or its optional extra is not installed
            continue
        mod.register(app)


_register_optional()


def main() -> None:
    """Entry point (the ``dynamickv`` script): run the app; every failure the user can fix is one line.

    Exit status: 0 success; 2 a usage error or bad input (``error: ...``); 130 interrupted (Ctrl-C);
    1 a file system failure while running (disk full, read-only). ``--debug`` or ``DYNAMICKV_DEBUG=1``
    shows the traceback instead.
    """
    sys.exit(run(sys.argv[1:]))


def run(args: list[str]) -> int:
    """Run the command line ``args``; return the exit status (printing what went wrong on stderr)."""
    clicks = _click_exceptions()
    try:
        status = app(args=args, prog_name="dynamickv", standalone_mode=False)
    except CommandInterrupted as exc:
        return _fail(f"interrupted: {exc}", 130)
    except (KeyboardInterrupt, typer.Abort, getattr(clicks, "Abort", typer.Abort)):
        return _fail("interrupted", 130)
    except DynamicKVError as exc:
        return _fail(f"error: {exc}", 2)
    except getattr(clicks, "NoArgsIsHelpError", ()) as exc:
        if exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        return _fail("error: missing command (see the list above, or dynamickv --help)", 2)
    except clicks.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "dynamickv --help"
        return _fail(f"error: {exc.format_message().rstrip('.')} (see {where})", exc.exit_code)
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader of stdout went away (`dynamickv methods | head -1`)
            return 1
        if exc.errno not in _FILE_SYSTEM_ERRORS:
            raise
        return _fail(f"error: {exc.strerror}: {exc.filename or ''}".rstrip(": "), 1)
    if status == 130:  # typer turns Ctrl-C into an exit status of 130
        return _fail("interrupted", 130)
    return status if isinstance(status, int) else 0


def _click_exceptions():
    """The module of the click exceptions typer raises: the click copy bundled in recent typer
    (``typer._click``), else click itself. Why: ``import click`` does not catch the bundled ones."""
    import importlib

    core = importlib.import_module("typer.core")
    bundled = getattr(core, "_click", None)
    return importlib.import_module((bundled.__name__ if bundled else "click") + ".exceptions")


#: ``OSError`` numbers that mean "the file system refused", not a bug: reported in one line.
_FILE_SYSTEM_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _fail(message: str, status: int) -> int:
    """Print ``message`` (or re-raise the exception being handled, with ``DYNAMICKV_DEBUG``)."""
    if os.environ.get("DYNAMICKV_DEBUG") and sys.exc_info()[1] is not None:
        raise sys.exc_info()[1]
    typer.echo(message, err=True)
    return status


if __name__ == "__main__":  # pragma: no cover
    main()

"""``dynamickv eval``: run RULER, NIAH or LongBench(-E) over a methods x budgets grid.

Registered on the main app by :func:`dynamickv.cli._register_optional`. Everything that can be checked
without the model (benchmark, tasks, methods, budgets, data folder, output folder) is checked before the
model is loaded. Heavy imports happen inside the command, so ``dynamickv --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from dynamickv.errors import CommandInterrupted, InputError

BENCHMARKS = ("ruler", "niah", "longbench", "longbench-e")
DEFAULT_METHODS = "streamingllm,h2o,snapkv,pyramidkv,dynamickv,windowkv"
DEFAULT_LENGTHS = {"ruler": "4096", "niah": "1024,2048,4096"}
DEFAULT_RULER_SAMPLES = 20


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _ints(text: str | None, what: str) -> list[int]:
    out = []
    for part in _csv(text):
        try:
            value = int(part.lower().removesuffix("k")) * (1024 if part.lower().endswith("k") else 1)
        except ValueError:
            raise InputError(f"{what}: {part!r} is not an integer") from None
        if value <= 0:
            raise InputError(f"{what} must be positive, got {part!r}")
        out.append(value)
    return out


def _floats(text: str | None, what: str) -> list[float]:
    out = []
    for part in _csv(text):
        try:
            out.append(float(part))
        except ValueError:
            raise InputError(f"{what}: {part!r} is not a number") from None
    return out


def _depths(text: str | None, what: str = "--depths") -> list[float]:
    """Needle depths in percent (0-100), each once: ``50`` and ``50.0`` would make the same sample twice."""
    out = list(dict.fromkeys(_floats(text, what)))
    bad = [d for d in out if not 0 <= d <= 100]
    if bad:
        raise InputError(f"{what} are percentages of the context (0 to 100), got {bad[0]:g}")
    if text is not None and not out:
        raise InputError(f"{what} is empty")
    return out


def _lengths(text: str | None, default: str | None, what: str = "--lengths") -> list[int]:
    """Sequence lengths (``4096`` or ``4k``), each once; a given but empty list is an error, not 0 samples."""
    out = list(dict.fromkeys(_ints(text or default, what)))
    if text is not None and not out:
        raise InputError(f"{what} is empty")
    return out


def _tasks(benchmark: str, tasks: list[str]) -> list[str]:
    """The tasks to run (validated); defaults: all RULER tasks, the 16 English LongBench tasks, the
    LongBench-E tasks."""
    if benchmark == "ruler":
        from dynamickv.eval.ruler import RULER_TASKS

        unknown = [t for t in tasks if t not in RULER_TASKS]
        if unknown:
            raise InputError(f"unknown RULER task(s) {', '.join(unknown)}; valid: {', '.join(RULER_TASKS)}")
        return list(dict.fromkeys(tasks)) or list(RULER_TASKS)
    if benchmark == "niah":
        if any(t != "niah" for t in tasks):
            raise InputError("niah has a single task (niah): choose its cells with --lengths and --depths")
        return ["niah"]
    from dynamickv.eval import longbench

    e = benchmark == "longbench-e"
    out = []
    for t in tasks:
        name, as_e = longbench._resolve_task(t, e)  # raises InputError naming the valid tasks
        if as_e and not e:  # 'qasper_e' under plain longbench would read qasper.jsonl
            raise InputError(f"{t} is a LongBench-E task: `eval longbench-e --tasks {name}` runs it")
        out.append(name)
    return list(dict.fromkeys(out)) or list(longbench.TASKS_E if e else longbench.TASKS_EN)


#: ``eval niah``'s default needle depths (percent).
NIAH_DEPTHS = "0,25,50,75,100"


def _check_options_apply(
    benchmark: str,
    lengths: str | None,
    samples: int | None,
    data_dir: Path | None,
    depths: str | None,
    max_input_tokens: int | None,
) -> None:
    """Refuse an option the benchmark would ignore: a silently ignored option is a silently wrong run."""
    longbench = benchmark in ("longbench", "longbench-e")
    if longbench:
        if lengths is not None:
            raise InputError(
                "--lengths applies to ruler and niah; LongBench prompts are truncated to the model"
            )
        if data_dir is None:
            raise InputError("LongBench needs --data-dir: the folder holding the <task>.jsonl files")
    else:
        for given, option in ((data_dir, "--data-dir"), (max_input_tokens, "--max-input-tokens")):
            if given is not None:
                raise InputError(f"{option} applies to longbench and longbench-e, not {benchmark}")
    if depths is not None and benchmark != "niah":
        raise InputError(f"--depths applies to niah, not {benchmark}")
    if samples is not None and benchmark == "niah":
        raise InputError("niah has one sample per length x depth: choose them with --lengths and --depths")
    if max_input_tokens is not None and max_input_tokens < 2:
        raise InputError(f"--max-input-tokens must be at least 2, got {max_input_tokens}")


def _longbench_limit(model_name: str, model: Any, tokenizer: Any) -> int:
    """LongBench truncation: by the name the user gave when it is one the official / DynamicKV tables
    know (a loaded model's own name may be a cache path), else from the model's context length."""
    from dynamickv.eval import longbench

    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower()
    known = base in {k.lower() for k in longbench.MODEL2MAXLEN} or any(
        k in base for k in longbench.DYNAMICKV_MODEL2MAXLEN
    )
    if base and known:
        return longbench.max_input_tokens(model_name, tokenizer)
    return longbench.max_input_tokens(model, tokenizer)


def build_samples(
    benchmark: str,
    tokenizer: Any,
    model: Any,
    *,
    tasks: list[str],
    lengths: list[int],
    depths: list[float],
    samples: int | None,
    seed: int,
    records: dict[str, list[dict[str, Any]]] | None = None,
    max_input_tokens: int | None = None,
    model_name: str = "",
) -> list:
    """The benchmark's samples (RULER sample ids get the length: ``task/length/index``)."""
    if benchmark == "ruler":
        from dynamickv.eval import ruler

        out = []
        n = DEFAULT_RULER_SAMPLES if samples is None else samples
        for length in lengths:
            for task in tasks:
                for s in ruler.generate(task, tokenizer, length, n, seed=seed):
                    s.meta["uid"] = f"{task}/{length}/{s.index}"
                    out.append(s)
        return out
    if benchmark == "niah":
        from dynamickv.eval import niah

        return niah.generate(tokenizer, lengths, depths)
    from dynamickv.eval import longbench

    limit = max_input_tokens or _longbench_limit(model_name, model, tokenizer)
    out = []
    for task in tasks:
        out += longbench.build_samples(task, (records or {})[task], tokenizer, limit, limit=samples)
    return out


def eval_command(
    benchmark: Annotated[str, typer.Argument(help="ruler, niah, longbench or longbench-e")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (predictions, metrics, summary)")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded name, HF id, local dir or .gguf file")
    ] = "smollm2-135m",
    methods: Annotated[str, typer.Option(help="comma-separated; fullkv is always added")] = DEFAULT_METHODS,
    budgets: Annotated[
        str, typer.Option(help="comma-separated tokens per layer (or ratios)")
    ] = "64,128,256,512",
    lengths: Annotated[
        str | None, typer.Option(help="ruler/niah sequence lengths (4096,8192 or 4k,8k)")
    ] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks (default: all)")] = None,
    samples: Annotated[
        int | None, typer.Option(help="samples per task (ruler: 20 per task and length; longbench: all)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="LongBench data folder (<task>.jsonl files)")] = None,
    depths: Annotated[
        str | None, typer.Option(help="niah needle depths in percent (default 0,25,50,75,100)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    windowkv_mode: Annotated[
        str, typer.Option(help="auto: WindowKV decides; category: localization for qa, else aggregation")
    ] = "auto",
    protocol: Annotated[
        str,
        typer.Option(
            help="raw: the whole raw prompt compressed, first token from the prefill (the papers'); "
            "chat: the prompt as the chat user turn compressed; agnostic: the context alone compressed, "
            "the question after it"
        ),
    ] = "raw",
    seed: Annotated[int, typer.Option(help="RULER generation seed")] = 42,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="cap on generated tokens (default: the benchmark's per task)")
    ] = None,
    max_input_tokens: Annotated[
        int | None, typer.Option(help="LongBench truncation length (default: from the model)")
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu, cuda, cuda:1, ... or auto (layers spread over all GPUs)")
    ] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    attn: Annotated[str, typer.Option(help="attention implementation: sdpa or eager")] = "sdpa",
    shared_prefill: Annotated[
        bool,
        typer.Option(
            "--shared-prefill/--no-shared-prefill",
            help="one prefill per sample for every configuration (same predictions, faster)",
        ),
    ] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    batch_decode: Annotated[
        bool,
        typer.Option(
            "--batch-decode/--no-batch-decode",
            help="raw protocol: decode a sample's compressed configurations together in one batch",
        ),
    ] = True,
) -> None:
    """Evaluate compression METHODS at BUDGETS (plus the FullKV reference) on a benchmark."""
    import time

    from dynamickv.eval import runner

    benchmark = benchmark.strip().lower()
    if benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    task_list = _tasks(benchmark, _csv(tasks))
    if samples is not None and samples <= 0:
        raise InputError(f"--samples must be positive, got {samples}")
    length_list = _lengths(lengths, DEFAULT_LENGTHS.get(benchmark))
    depth_list = _depths(depths if depths is not None else NIAH_DEPTHS) if benchmark == "niah" else []
    _check_options_apply(benchmark, lengths, samples, data_dir, depths, max_input_tokens)
    if windowkv_mode not in ("auto", "category"):
        raise InputError(f"--windowkv-mode must be auto or category, got {windowkv_mode!r}")
    from dynamickv.eval.prompts import check_protocol

    protocol = check_protocol(protocol.strip().lower())
    config = runner.build_config(
        benchmark,
        model,
        _csv(methods),
        _csv(budgets),
        windowkv_mode=windowkv_mode,
        protocol=protocol,
        tasks=task_list,
        lengths=length_list if benchmark in ("ruler", "niah") else None,
        depths=depth_list if benchmark == "niah" else None,
        samples=samples,
        seed=seed if benchmark == "ruler" else None,
        data_dir=str(data_dir.expanduser().resolve()) if data_dir is not None else None,
        max_input_tokens=max_input_tokens,
        dtype=dtype,
        attn=attn,
        device=device,
    )
    # fail before loading anything: dtype, methods x budgets, the output folder, the data
    from dynamickv.budget import parse_budget
    from dynamickv.cli import _dtype
    from dynamickv.methods import get_method
    from dynamickv.options import check_attention, check_device, check_positive

    torch_dtype = _dtype(dtype)
    check_attention(attn)
    check_device(device)
    check_positive(max_new_tokens, "--max-new-tokens")

    for name in config["methods"]:
        for b in config["budgets"]:
            tokens = parse_budget(b).tokens
            if tokens is not None:
                get_method(name).validate(tokens, num_layers=10**6)  # name may be a spec
    runner.check_out_dir(
        out,
        {**config, "max_new_tokens": max_new_tokens},
        resume,
        ignore=("num_samples", "samples_digest", "batch_decode"),
    )
    if resume:  # the weights, not only their path: a resumed table must not mix two models
        config["model_fingerprint"] = _fingerprint(model)
        runner.check_out_dir(
            out,
            {**config, "max_new_tokens": max_new_tokens},
            resume,
            ignore=("num_samples", "samples_digest", "batch_decode"),
        )
    records = None
    if benchmark in ("longbench", "longbench-e"):
        from dynamickv.eval import longbench

        records = {t: longbench.load_task(t, data_dir, e=benchmark == "longbench-e") for t in task_list}

    from dynamickv.eval import distributed
    from dynamickv.models import load_model

    # under torchrun / accelerate launch: one rank per process, each on its own GPU, sharing the samples
    shard = distributed.current_shard()
    if shard.active and device == "auto":
        raise InputError(
            "--device auto spreads one model over every GPU; under torchrun give each rank its own: --device cuda"
        )
    distributed.init(shard)
    device = distributed.shard_device(device, shard)
    t0 = time.perf_counter()
    with distributed.main_first(shard):  # rank 0 fills the model and RULER caches, the others reuse them
        mdl, tok = load_model(
            model, dtype=torch_dtype, device=device, attn_implementation=attn, progress=progress
        )
        config.setdefault("model_fingerprint", _fingerprint(model))  # recorded in config.json
        _check_lengths(benchmark, length_list, mdl)
        sample_list = build_samples(
            benchmark,
            tok,
            mdl,
            tasks=task_list,
            lengths=length_list,
            depths=depth_list,
            samples=samples,
            seed=seed,
            records=records,
            max_input_tokens=max_input_tokens,
            model_name=model,
        )
    where = f", rank {shard.rank} of {shard.world} on {device}" if shard.active else ""
    runner.log(f"{len(sample_list)} samples ready in {time.perf_counter() - t0:.1f}s (model {model}{where})")
    t1 = time.perf_counter()
    try:
        metrics = runner.run(
            sample_list,
            mdl,
            tok,
            config["methods"],
            config["budgets"],
            out,
            benchmark=benchmark,
            resume=resume,
            config=config,
            windowkv_mode=windowkv_mode,
            protocol=protocol,
            batch_decode=batch_decode,
            max_new_tokens=max_new_tokens,
            shared_prefill=shared_prefill,
            progress=progress,
            model_name=model,
            shard=shard,
        )
    except KeyboardInterrupt:
        raise CommandInterrupted(
            f"predictions so far are in {out}; rerun with --resume to continue"
        ) from None
    finally:
        distributed.close(shard)
    if not shard.main:
        return
    runner.log(f"done in {time.perf_counter() - t1:.1f}s: {out / runner.SUMMARY_MD}")
    average = metrics["average"]
    ref = average.get(runner.REFERENCE, {}).get(runner.FULL)
    typer.echo(f"{'method':<14} {'budget':>7} {'score':>8} {'% full':>8}")
    for entry in metrics["configurations"]:
        value = average.get(entry["method"], {}).get(entry["budget"])
        pct = None if value is None or not ref else 100 * value / ref
        typer.echo(
            f"{entry['method']:<14} {entry['budget']:>7} "
            f"{'-' if value is None else f'{value:.2f}':>8} {'-' if pct is None else f'{pct:.1f}':>8}"
        )


def _fingerprint(model: str) -> str:
    """The fingerprint of the weights ``--model`` names (see :func:`dynamickv.modelfiles.weights_fingerprint`)."""
    from dynamickv.modelfiles import weights_fingerprint
    from dynamickv.models import resolve_model_dir

    return weights_fingerprint(resolve_model_dir(model, progress=False))


def _check_lengths(benchmark: str, lengths: list[int], model: Any) -> None:
    """RULER/NIAH lengths beyond the model's positions are refused before any sample is generated."""
    from dynamickv.limits import context_length

    limit = context_length(model)
    too_long = [n for n in lengths if limit is not None and n > limit]
    if benchmark in ("ruler", "niah") and too_long:
        raise InputError(
            f"--lengths {','.join(map(str, too_long))} exceed the model's {limit} positions "
            "(max_position_embeddings)"
        )


def _holding_the_out_lock(command):
    """``command`` run while holding ``--out``'s lock (rank 0 under torchrun): a second eval into the
    same folder is refused at once (see :mod:`dynamickv.eval.runlock`)."""

    @functools.wraps(command)
    def locked(*args: Any, **kwargs: Any) -> Any:
        from dynamickv.eval import distributed
        from dynamickv.eval.runlock import run_lock

        main = distributed.current_shard().main
        with run_lock(kwargs["out"]) if main else contextlib.nullcontext():
            return command(*args, **kwargs)

    return locked


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the main app."""
    app.command("eval")(_holding_the_out_lock(eval_command))

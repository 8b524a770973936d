"""``dynamickv analyze``: record DynamicKV's per-layer retention over a benchmark, score it, plot it.

Registered on the main app by :func:`dynamickv.cli._register_optional`. Arguments are checked before
the model is loaded; heavy imports happen inside the command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dynamickv.errors import InputError

BENCHMARKS = ("ruler", "longbench", "niah")


def analyze_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output folder (retention.jsonl, summary.json, PNGs)")
    ],
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="ruler, longbench or niah")] = "ruler",
    model: Annotated[
        str, typer.Option("--model", "-m", help="embedded name, HF id, local dir or .gguf file")
    ] = "smollm2-135m",
    budget: Annotated[str, typer.Option(help="DynamicKV's average tokens per layer (or a ratio)")] = "128",
    lengths: Annotated[str | None, typer.Option(help="ruler/niah sequence lengths (4096 or 4k,8k)")] = None,
    samples: Annotated[
        int | None, typer.Option(help="samples per task (ruler: default 2; longbench: all)")
    ] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks (default: all)")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="LongBench data folder (<task>.jsonl)")
    ] = None,
    max_input_tokens: Annotated[
        int | None, typer.Option(help="LongBench: middle-truncate prompts to this many tokens")
    ] = None,
    depths: Annotated[str, typer.Option(help="niah needle depths (%)")] = "10,50,90",
    seed: Annotated[int, typer.Option(help="RULER generation seed")] = 42,
    plots: Annotated[bool, typer.Option(help="draw the PNG plots")] = True,
    study: Annotated[
        str,
        typer.Option(
            help="retention: DynamicKV's kept tokens per layer and task; attention: where the observation "
            "window's attention goes per layer (sink, window, rest, entropy, the needle) and what --methods "
            "give each layer"
        ),
    ] = "retention",
    methods: Annotated[
        str, typer.Option(help="attention study: method specs whose per-layer budgets are compared")
    ] = "snapkv,pyramidkv,dynamickv",
    protocol: Annotated[
        str, typer.Option(help="what is compressed: raw (the papers'), chat or agnostic")
    ] = "raw",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    method: Annotated[
        str,
        typer.Option(help="method spec to analyse (default dynamickv; e.g. adakv, snapkv:heads=adaptive)"),
    ] = "dynamickv",
) -> None:
    """Record a method's (DynamicKV's by default) per-layer / per-KV-head kept-token counts and kept
    positions for every sample, score how task-dependent the allocation is, and plot it, including a
    layer x KV head heatmap of per-head retention (see dynamickv.analysis)."""
    from dynamickv.budget import parse_budget
    from dynamickv.eval import cli as ecli

    benchmark = benchmark.lower()
    if study not in ("retention", "attention"):
        raise InputError(f"unknown study {study!r}; choose retention or attention")
    from dynamickv.eval.prompts import check_protocol
    from dynamickv.methods import parse_method_spec

    protocol = check_protocol(protocol)
    method_list = ecli._csv(methods)
    for spec in method_list:
        parse_method_spec(spec)  # unknown methods or parameters: an error before the model loads
    if benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    try:
        parsed = parse_budget(budget)
    except (ValueError, TypeError) as exc:
        raise InputError(f"bad budget {budget!r}: {exc}") from None
    if (parsed.tokens is not None and parsed.tokens <= 0) or (parsed.tokens is None and not parsed.ratio > 0):
        raise InputError(f"the budget must be positive, got {budget!r}")
    if samples is not None and samples <= 0:
        raise InputError(f"--samples must be positive, got {samples}")
    task_list = ecli._tasks(benchmark, ecli._csv(tasks))
    length_list = ecli._lengths(lengths, ecli.DEFAULT_LENGTHS.get(benchmark))
    depth_list = ecli._depths(depths)
    if benchmark == "longbench" and lengths is not None:
        raise InputError("--lengths applies to ruler and niah; LongBench prompts are truncated to the model")
    if max_input_tokens is not None and benchmark != "longbench":
        raise InputError(f"--max-input-tokens applies to longbench, not {benchmark}")
    if max_input_tokens is not None and max_input_tokens < 2:
        raise InputError(f"--max-input-tokens must be at least 2, got {max_input_tokens}")
    from dynamickv.cli import _dtype
    from dynamickv.options import check_device, check_output_folder

    torch_dtype, device = _dtype(dtype), check_device(device)
    records_by_task = None
    if benchmark == "longbench":
        from dynamickv.eval import longbench

        if data_dir is None:
            raise InputError("longbench needs --data-dir (a folder with <task>.jsonl files)")
        records_by_task = {t: longbench.load_task(t, data_dir) for t in task_list}
    check_output_folder(out, "--out")
    _check_settings(
        out,
        {
            "study": study,
            "model": model,
            "benchmark": benchmark,
            "budget": str(parsed),
            "protocol": protocol,
            "method": method if study == "retention" else None,
            "methods": method_list if study == "attention" else None,
            "seed": seed if benchmark == "ruler" else None,
            "dtype": dtype.lower(),
            "max_input_tokens": max_input_tokens,
        },
    )
    from dynamickv.methods import get_method

    get_method(method)  # a bad spec fails here, before the model loads
    from dynamickv.models import load_model

    from . import retention

    t0 = time.perf_counter()
    mdl, tok = load_model(model, progress=False, dtype=torch_dtype, device=device)
    num_layers = mdl.config.num_hidden_layers
    get_method(method).validate(parsed.tokens or 1 << 30, num_layers)
    built, skipped = [], {}
    if benchmark == "ruler":  # per task, so that a task that cannot fit is skipped, not fatal
        for length in length_list:
            for task in task_list:
                try:
                    part = ecli.build_samples(
                        "ruler",
                        tok,
                        mdl,
                        tasks=[task],
                        lengths=[length],
                        depths=[],
                        samples=2 if samples is None else samples,
                        seed=seed,
                    )
                except InputError as exc:
                    skipped[f"{task}/{length}"] = str(exc)
                    typer.echo(f"skipping {task} at {length}: {exc}", err=True)
                    continue
                built += part
    else:
        built = ecli.build_samples(
            benchmark,
            tok,
            mdl,
            tasks=task_list,
            lengths=length_list,
            depths=depth_list,
            samples=samples,
            seed=seed,
            records=records_by_task,
            max_input_tokens=max_input_tokens,
            model_name=model,
        )
    if not built:
        raise InputError("no samples to analyze")
    if study == "attention":
        from . import attention

        if parsed.tokens is None:
            raise InputError("the attention study needs a token budget (e.g. 128), not a ratio")
        rows = attention.run_study(
            mdl,
            tok,
            built,
            parsed.tokens,
            method_list,
            out,
            protocol,
            progress=lambda m: typer.echo(m, err=True),
        )
        result = {"model": model, "benchmark": benchmark, "budget": parsed.tokens, "protocol": protocol}
        result["summary"] = attention.summary(rows)
        if plots:
            result["plots"] = [
                p.name for p in attention.plot(rows, out, title=f"{model}, {benchmark}, B={budget}")
            ]
        result["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "attention_summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {out} ({len(rows)} samples, {result['seconds']} s)")
        return
    records = retention.record_samples(
        mdl,
        tok,
        built,
        budget,
        out,
        progress=lambda m: typer.echo(m, err=True),
        method=method,
        protocol=protocol,
    )
    wanted = {retention.sample_uid(s) for s in built}
    records = [r for r in records if r["uid"] in wanted]
    summary = retention.summarize(
        records,
        model=model,
        method=method,
        protocol=protocol,
        benchmark=benchmark,
        budget=str(budget),
        num_layers=num_layers,
        kv_heads=mdl.config.num_key_value_heads,
        skipped=skipped,
    )
    if plots:
        from . import plots as plotting

        summary["plots"] = [p.name for p in plotting.plot_all(records, out, title=f"{model}, {benchmark}")]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / retention.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    td = summary["task_dependence"]
    for by in ("category", "task"):
        typer.echo(
            f"task dependence by {by}: F={td[by]['f']} p={td[by]['p_value']} groups={td[by]['groups']}"
        )
    typer.echo(f"wrote {out} ({len(records)} samples, {summary['seconds']} s)")


#: What ``analyze`` writes into ``--out`` beside its records: the settings the records were made with.
SETTINGS = "settings.json"


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Records already in ``out`` are reused (a rerun resumes), so they must come from the same
    settings: a record is keyed by its sample alone, and another budget, method, protocol or model
    would otherwise be summarised under this run's name. Folders from before ``settings.json``
    existed are compared on what their summary recorded."""
    from dynamickv.budget import parse_budget

    from . import retention

    path = out / SETTINGS
    records = [out / name for name in (retention.RECORDS, "attention.jsonl")]
    if not any(p.is_file() and p.stat().st_size for p in records):  # nothing to reuse: a fresh start
        path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
    else:
        summaries = [out / retention.SUMMARY, out / "attention_summary.json"]
        old = next((json.loads(p.read_text(encoding="utf-8")) for p in summaries if p.is_file()), None)
        if old is None:
            raise InputError(
                f"--out {out} holds records whose settings were not recorded (an interrupted run of an earlier "
                "dynamickv); use another --out"
            )
        old = {k: v for k, v in old.items() if k in ("model", "benchmark", "budget", "protocol", "method")}
        if "budget" in old:  # an older summary kept the budget as given ("10%")
            try:
                old["budget"] = str(parse_budget(old["budget"]))
            except (ValueError, TypeError):
                pass
    differ = [k for k in settings if k in old and str(old[k]) != str(settings[k])]
    if differ:
        details = "; ".join(f"{k}: {old[k]!r} there, {settings[k]!r} here" for k in differ)
        raise InputError(
            f"--out {out} holds an analysis made with other settings ({details}), whose records a rerun would "
            "reuse; use another --out"
        )
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Add ``analyze`` to the main app."""
    app.command(
        "analyze",
        short_help="Per-layer and per-KV-head kept tokens of a method on a benchmark: table, JSON, plots.",
    )(analyze_command)

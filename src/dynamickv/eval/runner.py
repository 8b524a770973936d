"""Run a benchmark over a methods x budgets grid: one prefill per sample, every configuration from it.

For each sample the prompt is split as :func:`dynamickv.report.answer_report` splits it: the chat-formatted
prompt up to the end of the user's content is the *head* (prefilled and compressed), the rest (end of turn,
assistant header and, for RULER, the answer prefix) is the *tail*, fed after compression; without a chat
template the last prompt token is the tail. The head is prefilled once
(:func:`dynamickv.replay.record_prefill`) and every configuration's cache is derived from that record
(:func:`dynamickv.replay.derive_cache`, the same selection code as a live prefill), then decoded greedily
through :meth:`dynamickv.pipeline.Pipeline.answer`.
``shared_prefill=False`` runs each configuration with its own :class:`~dynamickv.pipeline.Pipeline` prefill
instead (identical predictions, for timing comparisons and tests).

Output folder::

    config.json        the run configuration (checked on --resume)
    predictions.jsonl  one line per (sample, configuration), appended and fsynced as produced
    metrics.json       scores per task x method x budget, averages, % of FullKV
    summary.md/.csv    methods x budgets tables, FullKV as the reference row
    heatmaps/*.png     NIAH only: one heatmap per configuration

An interrupted run resumes with ``resume=True``: configurations already in ``predictions.jsonl`` are skipped,
a truncated last line is dropped, nothing is duplicated.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dynamickv.budget import Budget
from dynamickv.errors import BudgetError, InputError
from dynamickv.eval import distributed
from dynamickv.eval.base import Sample
from dynamickv.eval.distributed import Shard
from dynamickv.eval.grid import (
    BENCHMARKS,
    FULL,
    REFERENCE,
    Configuration,
    _check_windowkv_mode,
    configurations,
    method_params,
    normalize_budgets,
    normalize_methods,
)
from dynamickv.eval.outdir import (
    CONFIG_FILE,
    HEATMAP_DIR,
    METRICS_FILE,
    NOT_COMPARED,
    PREDICTIONS_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    TIMING_FIELDS,
    _jsonable,
    _write_json,
    build_config,
    check_out_dir,
    load_predictions,
    merge_shards,
    record_key,
    record_software,
    software,
)
from dynamickv.eval.prompts import (
    DEFAULT_PROTOCOL,
    check_protocol,
    sample_uid,
    samples_digest,
    split_prompt,
)
from dynamickv.eval.scorers import LongBenchScorer, NiahScorer, RulerScorer, Scorer, get_scorer
from dynamickv.eval.summary import compute_metrics, finalize, write_heatmaps, write_summary


def _stop_on_newline(tokenizer: Any, start: int) -> Any:
    """A stopping criterion: stop once the generated text holds a newline (LongBench samsum)."""
    from transformers import StoppingCriteria

    class StopOnNewline(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = ["\n" in tokenizer.decode(row[start:], skip_special_tokens=True) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnNewline()


def _decode(pipe: Any, ctx: Any, tail_ids: torch.Tensor, sample: Sample, max_new_tokens: int) -> str:
    """Greedy answer from a compressed context (the one decoding path of both modes).

    With an empty tail (the ``raw`` protocol) the first answer token is the prefill's own prediction
    (``ctx.last_logits``, computed with full attention, as the papers' code does) and the rest is
    decoded from the compressed cache."""
    tok = pipe.tokenizer
    first = None
    if tail_ids.shape[-1] == 0:
        if ctx.last_logits is None:
            raise InputError("the raw protocol needs the prefill's logits (CompressedContext.last_logits)")
        first = ctx.last_logits.argmax(-1, keepdim=True).to(ctx.input_ids.device)
        eos = pipe.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        if int(first) in eos or max_new_tokens == 1:
            return "" if int(first) in eos else tok.decode(first[0], skip_special_tokens=True)
        tail_ids, max_new_tokens = first, max_new_tokens - 1
    kwargs: dict[str, Any] = {}
    if sample.meta.get("stop_on_newline"):
        from transformers import StoppingCriteriaList

        start = ctx.input_ids.shape[-1] + (0 if first is not None else tail_ids.shape[-1])
        kwargs["stopping_criteria"] = StoppingCriteriaList([_stop_on_newline(tok, start)])
        if first is not None and "\n" in tok.decode(first[0], skip_special_tokens=True):
            return tok.decode(first[0], skip_special_tokens=True)
    out = pipe.generate_ids(ctx, tail_ids, max_new_tokens, **kwargs)
    if first is not None:
        out = torch.cat([first, out], dim=-1)
    return tok.decode(out[0], skip_special_tokens=True)


def _entry(uid, sample, c, name, params, ctx, prediction, scorer, tail_ids) -> dict[str, Any]:
    """A prediction record (timings added by the caller)."""
    from dynamickv.cache import cache_bytes, kept_tokens_per_layer, kept_tokens_per_layer_head

    n_head = ctx.input_ids.shape[-1]
    entry = {
        "uid": uid,
        "task": sample.task,
        "method": c.method,
        "budget": c.budget_value,
        "prediction": prediction,
        "answers": list(sample.answers),
        "score": scorer.sample(sample, prediction),
        "kept_tokens_per_layer": kept_tokens_per_layer(ctx.cache),
        "kept_tokens_per_layer_head": kept_tokens_per_layer_head(ctx.cache),
        "layer_budgets": list(ctx.stats.layer_budgets),
        "kv_bytes": cache_bytes(ctx.cache),
        "prompt_tokens": int(n_head + tail_ids.shape[-1]),
        "compressed_tokens": int(n_head),
    }
    if name == "windowkv":
        entry["windowkv_mode"] = ctx.stats.extra.get("mode")
        entry["windowkv_mode_setting"] = params.get("mode", "auto")
    return entry


def _write(fh, entry: dict[str, Any], records: list, done: set, c: Configuration) -> None:
    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
    records.append(entry)
    done.add((entry["uid"], c.method, c.budget_key))


def batched_predictions(
    model: torch.nn.Module, tokenizer: Any, contexts: Sequence[Any], max_new_tokens: int, device: torch.device
) -> list[str]:
    """Greedy answers of several compressed caches of the same prompt, decoded together.

    Under the ``raw`` protocol every configuration of a sample starts from the same first token (the
    prefill's own prediction) at the same position, so their caches are rows of one
    :class:`~dynamickv.batch_decoder.BatchDecoder` (each row keeps its own per-layer and per-head counts;
    padding is masked). On CPU the answers equal decoding each alone, token for token
    (``tests/test_eval_batched.py``); on a GPU, batched bf16 kernels may round differently.
    """
    from dynamickv.batch_decoder import BatchDecoder

    eos = model.generation_config.eos_token_id
    first = contexts[0].last_logits.argmax(-1).to(device)
    decoder = BatchDecoder(model, len(contexts), max_new_tokens, eos_token_id=eos, mode="plain")
    rows = [decoder.add(ctx.cache, first, max_new_tokens)[0] for ctx in contexts]
    decoder.run()
    return [tokenizer.decode(decoder.pop(r).tolist(), skip_special_tokens=True) for r in rows]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _progress(enabled: bool, total: int, completed: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    task = progress.add_task("eval", total=total, completed=completed)
    return progress, task


def run(
    samples: Sequence[Sample],
    model: torch.nn.Module,
    tokenizer: Any,
    methods: Iterable[str],
    budgets: Iterable[Budget | int | float | str],
    out: str | Path,
    *,
    benchmark: str = "ruler",
    resume: bool = False,
    config: dict[str, Any] | None = None,
    windowkv_mode: str = "auto",
    max_new_tokens: int | None = None,
    shared_prefill: bool = True,
    progress: bool = True,
    scorer: Scorer | None = None,
    model_name: str | None = None,
    shard: Shard | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    batch_decode: bool = True,
) -> dict[str, Any]:
    """Evaluate every configuration of ``methods x budgets`` (plus FullKV) on ``samples``; return the metrics.

    ``batch_decode``: under the ``raw`` protocol with a shared prefill, decode a sample's compressed
    configurations together (:func:`batched_predictions`; FullKV, the reference, is decoded alone).
    A model the batched decoder cannot hold decodes one configuration at a time; ``config.json``
    records which was used.
    ``protocol`` says what is compressed and what is fed after it (:data:`dynamickv.eval.prompts.PROTOCOLS`;
    default ``"raw"``, the papers'); it is stored in ``config.json`` and stated in ``summary.md``.

    ``config`` is the configuration to store and check on resume (default: built from the arguments);
    ``max_new_tokens`` caps each sample's generation length; ``scorer`` overrides the benchmark's.
    ``shard`` (see :mod:`dynamickv.eval.distributed`): under ``torchrun`` every rank calls ``run`` with the
    same arguments and its own shard; each decodes its share of the samples, rank 0 merges the files.
    """
    from dynamickv.batch_decoder import BatchDecoder
    from dynamickv.compressor import compressible_layers
    from dynamickv.methods import get_method, parse_method_spec
    from dynamickv.pipeline import CompressedContext, Pipeline
    from dynamickv.replay import derive_cache, record_prefill

    scorer = scorer or get_scorer(benchmark)
    windowkv_mode = _check_windowkv_mode(windowkv_mode)
    protocol = check_protocol(protocol)
    grid = configurations(methods, budgets)
    if not samples:
        raise InputError("no samples to evaluate")
    uids = [sample_uid(s) for s in samples]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise InputError(f"sample ids are not unique (e.g. {dup!r}); set meta['uid'] to tell them apart")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")

    # The batched decoder holds every layer in static buffers: compressed ones and sliding windows
    # (Gemma 3's local layers). A model with other uncompressed layers decodes each configuration alone.
    if batch_decode and protocol == "raw" and shared_prefill and not BatchDecoder.supports(model):
        batch_decode = False
        if shard is None or shard.main:
            log("the batched decoder cannot hold this model: each configuration is decoded alone (slower)")

    # -- configuration and output folder ------------------------------------------------------------
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    if config is None:
        config = build_config(benchmark, name, methods, budgets, windowkv_mode=windowkv_mode)
    config = _jsonable(
        {
            **config,
            "protocol": protocol,
            "batch_decode": bool(batch_decode and protocol == "raw" and shared_prefill),
            "max_new_tokens": max_new_tokens,
            "num_samples": len(samples),
            "samples_digest": samples_digest(samples),
        }
    )
    out = Path(out)
    check_out_dir(out, config, resume)

    # -- check budgets against the model and the prompts (before writing anything) --------------------
    num_layers = len(compressible_layers(model))
    budgets_parsed = normalize_budgets(budgets)
    variants = {
        (c.method, tuple(sorted(method_params(c.method, s, windowkv_mode).items())))
        for c in grid
        for s in samples
    }
    for c in grid:
        if c.budget is not None and c.budget.tokens is not None:
            for method, params in variants:
                if method == c.method:
                    get_method(method, **dict(params)).validate(c.budget.tokens, num_layers)
    observation_queries = max([64] + [get_method(m, **dict(p)).observation_queries for m, p in variants])
    lengths = [split_prompt(s, tokenizer, protocol)[0].shape[-1] for s in samples]
    token_budgets = [b.tokens for b in budgets_parsed if b.tokens is not None]
    if token_budgets and len(token_budgets) == len(budgets_parsed) and min(token_budgets) >= max(lengths):
        raise BudgetError(
            f"every budget ({', '.join(map(str, token_budgets))}) is >= every prompt's length (at most "
            f"{max(lengths)} compressed tokens): nothing would be compressed; use smaller budgets or longer "
            "prompts"
        )
    for b in token_budgets:
        if b >= max(lengths):
            warnings.warn(
                f"budget {b} is >= every prompt's length (at most {max(lengths)} tokens): it keeps all",
                stacklevel=2,
            )

    shard = shard or Shard()
    distributed.barrier(shard)  # every rank has checked the folder before rank 0 writes to it
    preds_path = out / PREDICTIONS_FILE
    if shard.main:
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / CONFIG_FILE
        current = software(model)
        if not config_path.is_file():
            _write_json(
                config_path, {**config, "software": current, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            )
        elif (changed := record_software(config_path, current)) is not None:
            log(changed)
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        config = {**config, **{k: stored[k] for k in ("software", "resumed_with") if k in stored}}
        records = merge_shards(out, uids, grid)  # fold in what an interrupted sharded run left
    distributed.barrier(shard)
    if not shard.main:
        records = load_predictions(preds_path, repair=False)
    done = {record_key(r) for r in records}

    pending = [
        (sample, uid)
        for sample, uid in zip(samples, uids, strict=True)
        if any((uid, c.method, c.budget_key) not in done for c in grid)
    ]
    if shard.active:  # a run cut short then covers every task (the merged file is in sample order)
        pending = distributed.interleave(pending, key=lambda item: item[0].task)
    mine = shard.take(pending)
    total = len(mine) * len(grid)
    completed = sum((uid, c.method, c.budget_key) in done for _, uid in mine for c in grid)
    device = next(model.parameters()).device
    device_name = _device_name(device)
    answer_pipe = Pipeline(model, tokenizer, REFERENCE, budget=1)  # its compressor installs the wrapper
    write_path = distributed.shard_file(out, shard.rank) if shard.active else preds_path

    bar, bar_task = _progress(progress and shard.main, total, completed)
    with bar, open(write_path, "a", encoding="utf-8") as fh, torch.inference_mode():
        for sample, uid in mine:
            todo = [c for c in grid if (uid, c.method, c.budget_key) not in done]
            head_ids, tail_ids = (t.to(device) for t in split_prompt(sample, tokenizer, protocol))
            n_head = head_ids.shape[-1]
            new_tokens = (
                sample.max_new_tokens
                if max_new_tokens is None
                else min(max_new_tokens, sample.max_new_tokens)
            )
            record = None
            prefill_seconds = None
            if shared_prefill:
                _sync(device)
                t0 = time.perf_counter()
                record = record_prefill(model, head_ids, observation_queries=observation_queries)
                _sync(device)
                prefill_seconds = time.perf_counter() - t0
            batched = (
                batch_decode
                and record is not None
                and tail_ids.shape[-1] == 0
                and not sample.meta.get("stop_on_newline")
            )
            pending_entries: list[tuple[Configuration, str, dict, Any, float]] = []
            for c in todo:
                bar.update(bar_task, description=f"{uid} {c.label}")
                name = parse_method_spec(c.method)[0]
                params = method_params(c.method, sample, windowkv_mode)  # the spec's own included
                budget: Budget | int = c.budget if c.budget is not None else n_head
                _sync(device)
                t0 = time.perf_counter()
                if record is not None:
                    cache, stats = derive_cache(record, name, budget, **params)
                    ctx = CompressedContext(cache, head_ids, stats, record.seconds, record.last_logits)
                    pipe = answer_pipe
                else:
                    pipe = Pipeline(model, tokenizer, name, budget, **params)
                    ctx = pipe.prefill(head_ids)
                if batched and c.method != REFERENCE:
                    _sync(device)
                    pending_entries.append((c, name, params, ctx, time.perf_counter() - t0))
                    continue
                prediction = _decode(pipe, ctx, tail_ids, sample, new_tokens)
                _sync(device)
                entry = _entry(uid, sample, c, name, params, ctx, prediction, scorer, tail_ids)
                entry.update(
                    seconds=time.perf_counter() - t0, prefill_seconds=prefill_seconds, device=device_name
                )
                _write(fh, entry, records, done, c)
                bar.advance(bar_task)
                del ctx
            if pending_entries:
                t0 = time.perf_counter()
                predictions = batched_predictions(
                    model, tokenizer, [e[3] for e in pending_entries], new_tokens, device
                )
                share = (time.perf_counter() - t0) / len(pending_entries)
                for (c, name, params, ctx, derive_seconds), prediction in zip(pending_entries, predictions):
                    entry = _entry(uid, sample, c, name, params, ctx, prediction, scorer, tail_ids)
                    entry.update(
                        seconds=derive_seconds + share,
                        prefill_seconds=prefill_seconds,
                        device=device_name,
                        decode="batched",
                    )
                    _write(fh, entry, records, done, c)
                    bar.advance(bar_task)
                del pending_entries
            if record is not None:
                record.release()
            del record

    if not shard.active:
        return finalize(out, samples, grid, records, scorer, config)
    distributed.barrier(shard)  # every shard is complete
    if shard.main:
        metrics = finalize(out, samples, grid, merge_shards(out, uids, grid), scorer, config)
    distributed.barrier(shard)
    if not shard.main:
        metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    return metrics


def _device_name(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``: where a prediction was computed."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = [
    "BENCHMARKS",
    "CONFIG_FILE",
    "FULL",
    "HEATMAP_DIR",
    "METRICS_FILE",
    "NOT_COMPARED",
    "PREDICTIONS_FILE",
    "REFERENCE",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "TIMING_FIELDS",
    "Configuration",
    "LongBenchScorer",
    "NiahScorer",
    "RulerScorer",
    "Scorer",
    "build_config",
    "check_out_dir",
    "compute_metrics",
    "configurations",
    "finalize",
    "get_scorer",
    "load_predictions",
    "log",
    "merge_shards",
    "method_params",
    "normalize_budgets",
    "normalize_methods",
    "record_key",
    "run",
    "sample_uid",
    "samples_digest",
    "split_prompt",
    "write_heatmaps",
    "write_summary",
]

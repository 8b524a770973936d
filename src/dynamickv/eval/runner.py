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

import csv
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamickv.budget import Budget, parse_budget
from dynamickv.errors import BudgetError, InputError
from dynamickv.eval import distributed
from dynamickv.eval.base import Sample
from dynamickv.eval.distributed import Shard
from dynamickv.eval.runlock import LOCK_FILE

BENCHMARKS: tuple[str, ...] = ("ruler", "niah", "longbench", "longbench-e")
REFERENCE = "fullkv"
FULL = "full"  # budget key of the FullKV reference

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
HEATMAP_DIR = "heatmaps"

#: config.json keys that may change between a run and its resumption.
NOT_COMPARED = frozenset({"device", "created"})
#: config.json keys compared only when both runs recorded them (runs made before they existed resume).
COMPARED_IF_RECORDED = frozenset({"model_fingerprint"})
#: Prediction-record fields that vary from run to run (timings).
TIMING_FIELDS = frozenset({"seconds", "prefill_seconds"})


# --------------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """One column of the grid: a method at a budget (FullKV: no budget)."""

    method: str
    budget: Budget | None

    @property
    def budget_key(self) -> str:
        return FULL if self.budget is None else str(self.budget)

    @property
    def budget_value(self) -> int | float | None:
        if self.budget is None:
            return None
        return self.budget.tokens if self.budget.tokens is not None else self.budget.ratio

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method} B={self.budget}"


def normalize_methods(methods: Iterable[str]) -> list[str]:
    """Canonical method specs (``snapkv`` or ``snapkv:window=8;pooling=avg``), FullKV first (always
    included once), duplicates removed; unknown methods or parameters -> error."""
    from dynamickv.methods import method_spec, parse_method_spec

    out = [REFERENCE]
    for name in methods:
        if not str(name).strip():
            continue
        key = method_spec(*parse_method_spec(str(name)))  # raises on unknown names and parameters
        if key not in out:
            out.append(key)
    return out


def normalize_budgets(budgets: Iterable[Budget | int | float | str]) -> list[Budget]:
    out: list[Budget] = []
    for b in budgets:
        parsed = parse_budget(b)
        if parsed not in out:
            out.append(parsed)
    if not out:
        raise BudgetError("no budget given")
    return out


def configurations(
    methods: Iterable[str], budgets: Iterable[Budget | int | float | str]
) -> list[Configuration]:
    """FullKV once, then every other method at every budget."""
    names = normalize_methods(methods)
    parsed = normalize_budgets(budgets)
    grid = [Configuration(REFERENCE, None)]
    grid += [Configuration(m, b) for m in names if m != REFERENCE for b in parsed]
    return grid


def method_params(method: str, sample: Sample, windowkv_mode: str) -> dict[str, Any]:
    """Per-sample parameters of a method spec: the spec's own, and with ``windowkv_mode="category"``
    WindowKV's mode from the task category (localization for qa, aggregation otherwise) unless the
    spec fixes it."""
    from dynamickv.methods import parse_method_spec

    name, fixed = parse_method_spec(method)
    if name == "windowkv" and windowkv_mode == "category":
        return {"mode": "localization" if sample.category == "qa" else "aggregation", **fixed}
    return fixed


def _check_windowkv_mode(mode: str) -> str:
    if mode not in ("auto", "category"):
        raise InputError(f"--windowkv-mode must be auto or category, got {mode!r}")
    return mode


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------


class Scorer:
    """How a benchmark scores: one sample (0-100) and a whole task."""

    name = ""

    def sample(self, sample: Sample, prediction: str) -> float:
        raise NotImplementedError

    def task(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]) -> tuple[float, dict]:
        """``(score, extra)``: the task score (0-100) and anything else worth keeping (buckets ...)."""
        scores = [self.sample(s, p) for s, p in zip(samples, predictions, strict=True)]
        return (sum(scores) / len(scores) if scores else float("nan")), {}

    def length_of(self, sample: Sample) -> int | None:
        """The sample's target sequence length, for per-length breakdowns (None: no breakdown)."""
        return None


class RulerScorer(Scorer):
    name = "ruler"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import ruler

        return ruler.score_per_sample(sample.task, [prediction], [sample])[0]

    def task(self, task, samples, predictions):
        from dynamickv.eval import ruler

        return ruler.score(task, list(predictions), list(samples)), {}

    def length_of(self, sample: Sample) -> int | None:
        return sample.meta.get("seq_length")


class NiahScorer(Scorer):
    name = "niah"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import niah

        return niah.score(prediction, sample)

    def length_of(self, sample: Sample) -> int | None:
        return sample.meta.get("length")


class LongBenchScorer(Scorer):
    def __init__(self, e: bool = False) -> None:
        self.e = e
        self.name = "longbench-e" if e else "longbench"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import longbench

        return 100.0 * longbench.score_samples(sample.task, [sample], [prediction])["per_sample"][0]

    def task(self, task, samples, predictions):
        from dynamickv.eval import longbench

        result = longbench.score_samples(task, list(samples), list(predictions), longbench_e=self.e)
        return float(result["score"]), ({"buckets": result["buckets"]} if "buckets" in result else {})


def get_scorer(benchmark: str) -> Scorer:
    """The scorer of ``benchmark`` (one of :data:`BENCHMARKS`)."""
    key = str(benchmark).strip().lower()
    if key == "ruler":
        return RulerScorer()
    if key == "niah":
        return NiahScorer()
    if key in ("longbench", "longbench-e"):
        return LongBenchScorer(e=key == "longbench-e")
    raise InputError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")


# --------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------


def sample_uid(sample: Sample) -> str:
    """The sample's id in the predictions file (``meta["uid"]`` overrides ``Sample.uid``, e.g. RULER's
    ``task/length/index`` when several lengths share indices)."""
    return str(sample.meta.get("uid") or sample.uid)


def split_prompt(sample: Sample, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(head_ids, tail_ids)``, each ``[1, n]`` on the CPU: the head is compressed, the tail fed after it.

    With a chat template (``sample.chat_template`` and the tokenizer has one) the prompt is the user turn;
    the tail is the end of turn plus assistant header, followed by ``meta["answer_prefix"]`` (stripped from
    the end of the prompt), so the answer prefix starts the assistant turn. Without one the prompt is
    tokenized as is (with the tokenizer's special tokens) and its last token is the tail.
    """
    from dynamickv.pipeline import split_chat_prompt

    prompt = sample.prompt
    if not prompt:
        raise InputError(f"sample {sample_uid(sample)} has an empty prompt")
    use_chat = bool(sample.chat_template and getattr(tokenizer, "chat_template", None))
    if use_chat:
        prefix = sample.meta.get("answer_prefix") or ""
        if prefix and prompt.endswith(prefix) and len(prompt) > len(prefix):
            prompt = prompt[: -len(prefix)]
        else:
            prefix = ""
        head, tail = split_chat_prompt(tokenizer, prompt, "", True)
        tail = tail + prefix.lstrip()
        head_ids = tokenizer(head, return_tensors="pt", add_special_tokens=False).input_ids
        tail_ids = tokenizer(tail, return_tensors="pt", add_special_tokens=False).input_ids
        if tail_ids.shape[-1] == 0:
            head_ids, tail_ids = head_ids[:, :-1], head_ids[:, -1:]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        head_ids, tail_ids = ids[:, :-1], ids[:, -1:]
    if head_ids.shape[-1] < 2:
        raise InputError(
            f"sample {sample_uid(sample)} is too short to compress ({head_ids.shape[-1]} tokens)"
        )
    return head_ids, tail_ids


def samples_digest(samples: Sequence[Sample]) -> str:
    """A fingerprint of what the samples ask (ids, prompts, answers, generation lengths)."""
    h = hashlib.sha256()
    for s in samples:
        item = [sample_uid(s), s.task, s.prompt, s.answers, s.max_new_tokens, s.chat_template, s.category]
        item.append(s.meta.get("answer_prefix"))
        item.append(bool(s.meta.get("stop_on_newline")))
        h.update(json.dumps(item, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# the output folder
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def build_config(
    benchmark: str,
    model: str,
    methods: Iterable[str],
    budgets: Iterable[Budget | int | float | str],
    *,
    windowkv_mode: str = "auto",
    **extra: Any,
) -> dict[str, Any]:
    """The run configuration as stored in ``config.json`` (methods/budgets normalized)."""
    get_scorer(benchmark)
    config = {
        "benchmark": str(benchmark).strip().lower(),
        "model": model,
        "methods": normalize_methods(methods),
        "budgets": [str(b) for b in normalize_budgets(budgets)],
        "windowkv_mode": _check_windowkv_mode(windowkv_mode),
        **extra,
    }
    return _jsonable(config)


def _differences(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    skip = set(NOT_COMPARED) | set(ignore)
    skip |= {k for k in COMPARED_IF_RECORDED if old.get(k) is None or new.get(k) is None}
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in skip]
    return [k for k in keys if old.get(k) != new.get(k)]


def check_out_dir(out: str | Path, config: dict[str, Any], resume: bool, ignore: Iterable[str] = ()) -> None:
    """Refuse to write into a folder that holds another run (without ``resume``) or a run with a
    different configuration (with ``resume``). Keys in ``ignore`` are not compared (not known yet)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    if not out.exists() or not any(p.name != LOCK_FILE for p in out.iterdir()):
        return  # (the lock file is the running eval's own, see dynamickv.eval.runlock)
    config_path = out / CONFIG_FILE
    if not resume:
        what = "holds a run" if config_path.is_file() else "is not empty"
        raise InputError(
            f"output folder {out} {what}; pass --resume to continue that run, or choose another --out "
            "(nothing was overwritten)"
        )
    if not config_path.is_file():
        raise InputError(f"cannot resume in {out}: it has no {CONFIG_FILE} (not an evaluation folder)")
    try:
        old = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"cannot resume in {out}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    new = _jsonable(config)
    diff = _differences(old, new, ignore)
    if "model_fingerprint" in diff:
        raise InputError(
            f"cannot resume in {out}: the weights of {new.get('model')!r} are not the ones the run was made "
            f"with (fingerprint {old['model_fingerprint']} there, {new['model_fingerprint']} here), and one "
            "table would mix two models' predictions; use another --out"
        )
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in diff)
        raise InputError(
            f"cannot resume in {out}: it was made with a different configuration (differing: "
            f"{', '.join(diff)}) - {details}. Use the original options or another --out"
        )


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    budget = record.get("budget")
    return str(record["uid"]), str(record["method"]), FULL if budget is None else str(parse_budget(budget))


def load_predictions(path: str | Path, repair: bool = True) -> list[dict[str, Any]]:
    """The records of a predictions file, first occurrence of each (uid, method, budget) kept.

    A last line without its newline (a run killed mid-write) is dropped, and with ``repair`` cut from the
    file so that appending continues on a clean line. A corrupt line elsewhere is an error.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    records: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    lines = data[:end].split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = record_key(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{lineno}: corrupt prediction record ({exc})") from None
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------


def _stop_on_newline(tokenizer: Any, start: int) -> Any:
    """A stopping criterion: stop once the generated text holds a newline (LongBench samsum)."""
    from transformers import StoppingCriteria

    class StopOnNewline(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = ["\n" in tokenizer.decode(row[start:], skip_special_tokens=True) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnNewline()


def _decode(pipe: Any, ctx: Any, tail_ids: torch.Tensor, sample: Sample, max_new_tokens: int) -> str:
    """Greedy answer from a compressed context (the one decoding path of both modes)."""
    kwargs: dict[str, Any] = {}
    if sample.meta.get("stop_on_newline"):
        from transformers import StoppingCriteriaList

        start = ctx.input_ids.shape[-1] + tail_ids.shape[-1]
        kwargs["stopping_criteria"] = StoppingCriteriaList([_stop_on_newline(pipe.tokenizer, start)])
    return pipe.answer(ctx, tail_ids, max_new_tokens, **kwargs)


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
) -> dict[str, Any]:
    """Evaluate every configuration of ``methods x budgets`` (plus FullKV) on ``samples``; return the metrics.

    ``config`` is the configuration to store and check on resume (default: built from the arguments);
    ``max_new_tokens`` caps each sample's generation length; ``scorer`` overrides the benchmark's.
    ``shard`` (see :mod:`dynamickv.eval.distributed`): under ``torchrun`` every rank calls ``run`` with the
    same arguments and its own shard; each decodes its share of the samples, rank 0 merges the files.
    """
    from dynamickv.cache import cache_bytes, kept_tokens_per_layer
    from dynamickv.compressor import compressible_layers
    from dynamickv.methods import get_method, parse_method_spec
    from dynamickv.pipeline import CompressedContext, Pipeline
    from dynamickv.replay import derive_cache, record_prefill

    scorer = scorer or get_scorer(benchmark)
    windowkv_mode = _check_windowkv_mode(windowkv_mode)
    grid = configurations(methods, budgets)
    if not samples:
        raise InputError("no samples to evaluate")
    uids = [sample_uid(s) for s in samples]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise InputError(f"sample ids are not unique (e.g. {dup!r}); set meta['uid'] to tell them apart")
    if max_new_tokens is not None and max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be positive, got {max_new_tokens}")

    # -- configuration and output folder ------------------------------------------------------------
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    if config is None:
        config = build_config(benchmark, name, methods, budgets, windowkv_mode=windowkv_mode)
    config = _jsonable(
        {
            **config,
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
    lengths = [split_prompt(s, tokenizer)[0].shape[-1] for s in samples]
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
        if not config_path.is_file():
            _write_json(config_path, {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
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
            head_ids, tail_ids = (t.to(device) for t in split_prompt(sample, tokenizer))
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
            for c in todo:
                bar.update(bar_task, description=f"{uid} {c.label}")
                name = parse_method_spec(c.method)[0]
                params = method_params(c.method, sample, windowkv_mode)  # the spec's own included
                budget: Budget | int = c.budget if c.budget is not None else n_head
                _sync(device)
                t0 = time.perf_counter()
                if record is not None:
                    cache, stats = derive_cache(record, name, budget, **params)
                    ctx = CompressedContext(cache, head_ids, stats, record.seconds)
                    pipe = answer_pipe
                else:
                    pipe = Pipeline(model, tokenizer, name, budget, **params)
                    ctx = pipe.prefill(head_ids)
                kv = cache_bytes(ctx.cache)
                kept = kept_tokens_per_layer(ctx.cache)
                prediction = _decode(pipe, ctx, tail_ids, sample, new_tokens)
                _sync(device)
                seconds = time.perf_counter() - t0
                entry = {
                    "uid": uid,
                    "task": sample.task,
                    "method": c.method,
                    "budget": c.budget_value,
                    "prediction": prediction,
                    "answers": list(sample.answers),
                    "score": scorer.sample(sample, prediction),
                    "kept_tokens_per_layer": kept,
                    "layer_budgets": list(ctx.stats.layer_budgets),
                    "kv_bytes": kv,
                    "prompt_tokens": int(n_head + tail_ids.shape[-1]),
                    "compressed_tokens": int(n_head),
                    "seconds": seconds,
                    "prefill_seconds": prefill_seconds,
                    "device": device_name,
                }
                if name == "windowkv":
                    entry["windowkv_mode"] = ctx.stats.extra.get("mode")
                    entry["windowkv_mode_setting"] = params.get("mode", "auto")
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                records.append(entry)
                done.add((uid, c.method, c.budget_key))
                bar.advance(bar_task)
                del ctx
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


def merge_shards(out: str | Path, uids: Sequence[str], grid: Sequence[Configuration]) -> list[dict[str, Any]]:
    """Fold ``predictions.rank*.jsonl`` into ``predictions.jsonl``; return every record.

    Without shard files the predictions file is left untouched. With them, the records (first occurrence
    of each key, truncated last lines dropped) are written in the single-process order (samples, then the
    grid; records of other samples after them) to a temporary file that atomically replaces
    ``predictions.jsonl``; only then are the shards removed, so a kill at any point loses nothing.
    """
    out = Path(out)
    path = out / PREDICTIONS_FILE
    shards = distributed.shard_files(out)
    records = load_predictions(path, repair=True)
    if not shards:
        return records
    seen = {record_key(r) for r in records}
    for shard_path in shards:
        for r in load_predictions(shard_path, repair=True):
            if record_key(r) not in seen:
                seen.add(record_key(r))
                records.append(r)
    rank = {(u, c.method, c.budget_key): i for i, (u, c) in enumerate((u, c) for u in uids for c in grid)}
    records.sort(key=lambda r: rank.get(record_key(r), len(rank)))  # stable: others keep their order
    tmp = path.with_name(path.name + ".merging")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for shard_path in shards:
        shard_path.unlink()
    return records


# --------------------------------------------------------------------------------------------------
# metrics and summaries
# --------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _pct(score: float | None, ref: float | None) -> float | None:
    if score is None or ref is None or ref == 0:
        return None
    return 100.0 * score / ref


def _nested_set(d: dict, keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def compute_metrics(
    samples: Sequence[Sample],
    grid: Sequence[Configuration],
    records: Sequence[dict[str, Any]],
    scorer: Scorer,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores per task x method x budget, averages over tasks and % of FullKV, from the prediction records."""
    by_key = {record_key(r): r for r in reversed(records)}  # first occurrence wins
    tasks = list(dict.fromkeys(s.task for s in samples))
    lengths = sorted({L for s in samples if (L := scorer.length_of(s)) is not None})

    def score_set(subset: Sequence[Sample]) -> tuple[dict, dict, dict]:
        scores: dict[str, dict[str, dict[str, float | None]]] = {}
        extra: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for task in tasks:
            task_samples = [s for s in subset if s.task == task]
            if not task_samples:
                continue
            counts[task] = len(task_samples)
            for c in grid:
                pairs = [
                    (s, by_key[(sample_uid(s), c.method, c.budget_key)]["prediction"])
                    for s in task_samples
                    if (sample_uid(s), c.method, c.budget_key) in by_key
                ]
                value, more = (None, {})
                if pairs:
                    value, more = scorer.task(task, [p[0] for p in pairs], [p[1] for p in pairs])
                    value = float(value)
                _nested_set(scores, [task, c.method, c.budget_key], value)
                if more:
                    _nested_set(extra, [task, c.method, c.budget_key], more)
        average: dict[str, dict[str, float | None]] = {}
        for c in grid:
            vals = [scores[t][c.method][c.budget_key] for t in scores]
            _nested_set(average, [c.method, c.budget_key], None if None in vals else _mean(vals))
        return scores, average, {"extra": extra, "n": counts}

    scores, average, info = score_set(samples)

    def relative(table: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
        ref = table.get(REFERENCE, {}).get(FULL)
        return {m: {b: _pct(v, ref) for b, v in row.items()} for m, row in table.items()}

    expected = len(samples) * len(grid)
    present = sum(1 for s in samples for c in grid if (sample_uid(s), c.method, c.budget_key) in by_key)
    metrics: dict[str, Any] = {
        "benchmark": (config or {}).get("benchmark", scorer.name),
        "model": (config or {}).get("model"),
        "complete": present == expected,
        "predictions": present,
        "expected_predictions": expected,
        "configurations": [{"method": c.method, "budget": c.budget_key} for c in grid],
        "tasks": tasks,
        "n": info["n"],
        "scores": scores,
        "average": average,
        "relative_to_fullkv": {
            **{t: relative(row) for t, row in scores.items()},
            "average": relative(average),
        },
    }
    if info["extra"]:
        metrics["extra"] = info["extra"]
    if len(lengths) > 1 or (lengths and scorer.name == "niah"):
        by_length = {}
        for L in lengths:
            subset = [s for s in samples if scorer.length_of(s) == L]
            s_scores, s_avg, s_info = score_set(subset)
            by_length[str(L)] = {"scores": s_scores, "average": s_avg, "n": s_info["n"]}
        metrics["by_length"] = by_length

    # cost: mean KV bytes, kept tokens, seconds per configuration
    cost: dict[str, dict[str, dict[str, float | None]]] = {}
    prefill = [r.get("prefill_seconds") for r in by_key.values() if r.get("prefill_seconds") is not None]
    for c in grid:
        rs = [r for (u, m, b), r in by_key.items() if m == c.method and b == c.budget_key]
        _nested_set(
            cost,
            [c.method, c.budget_key],
            {
                "kv_bytes": _mean([r["kv_bytes"] for r in rs]),
                "kept_tokens_per_layer": _mean(
                    [
                        sum(r["kept_tokens_per_layer"]) / len(r["kept_tokens_per_layer"])
                        for r in rs
                        if r["kept_tokens_per_layer"]
                    ]
                ),
                "seconds": _mean([r["seconds"] for r in rs]),
            },
        )
    metrics["cost"] = cost
    metrics["timing"] = {"shared_prefill_seconds_mean": _mean(prefill)}
    return metrics


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}%" if pct else f"{v:.2f}"


def _budget_columns(grid: Sequence[Configuration]) -> list[str]:
    return list(dict.fromkeys(c.budget_key for c in grid if c.budget is not None))


def _methods(grid: Sequence[Configuration]) -> list[str]:
    return list(dict.fromkeys(c.method for c in grid))


def _row_values(table: dict, method: str, budgets: list[str]) -> list[float | None]:
    row = table.get(method, {})
    if method == REFERENCE:
        return [row.get(FULL)] * len(budgets)
    return [row.get(b) for b in budgets]


def _md_table(title: str, table: dict, grid: Sequence[Configuration]) -> list[str]:
    budgets = _budget_columns(grid)
    ref = table.get(REFERENCE, {}).get(FULL)
    lines = [f"### {title}", "", "| Method | " + " | ".join(f"B={b}" for b in budgets) + " |"]
    lines.append("|---|" + "---:|" * len(budgets))
    for m in _methods(grid):
        cells = [f"{_fmt(v)} ({_fmt(_pct(v, ref), pct=True)})" for v in _row_values(table, m, budgets)]
        name = f"{m} (reference)" if m == REFERENCE else m
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_summary(out: Path, metrics: dict[str, Any], grid: Sequence[Configuration]) -> None:
    """``summary.md`` and ``summary.csv``: methods x budgets, per task and averaged, % of FullKV."""
    budgets = _budget_columns(grid)
    lines = [
        f"# {metrics['benchmark']} - {metrics.get('model') or ''}",
        "",
        f"Tasks: {', '.join(metrics['tasks'])}; predictions: {metrics['predictions']}/"
        f"{metrics['expected_predictions']}{'' if metrics['complete'] else ' (incomplete)'}.",
        "Each cell: score (percent of the FullKV reference).",
        "",
        "## Average over tasks",
        "",
        *_md_table("Average", metrics["average"], grid),
    ]
    for L, part in metrics.get("by_length", {}).items():
        lines += _md_table(f"Average over tasks, length {L}", part["average"], grid)
    lines += ["## Per task", ""]
    for task, table in metrics["scores"].items():
        lines += _md_table(f"{task} (n={metrics['n'].get(task, 0)})", table, grid)
    cost = metrics.get("cost", {})
    lines += [
        "## Cost (means per sample)",
        "",
        "| Method | Budget | kept tokens/layer | KV MiB | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for c in grid:
        row = cost.get(c.method, {}).get(c.budget_key, {})
        kv = row.get("kv_bytes")
        lines.append(
            f"| {c.method} | {c.budget_key} | {_fmt(row.get('kept_tokens_per_layer'))} | "
            f"{_fmt(kv / 2**20 if kv is not None else None)} | {_fmt(row.get('seconds'))} |"
        )
    shared = metrics.get("timing", {}).get("shared_prefill_seconds_mean")
    if shared is not None:
        lines += ["", f"Shared prefill: {shared:.3f} s per sample (mean)."]
    (out / SUMMARY_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")

    header = ["task", "method"]
    for b in budgets:
        header += [f"B={b}", f"B={b} %FullKV"]
    rows = []
    sections = [("average", metrics["average"])]
    sections += [(f"average@{L}", part["average"]) for L, part in metrics.get("by_length", {}).items()]
    sections += list(metrics["scores"].items())
    for task, table in sections:
        ref = table.get(REFERENCE, {}).get(FULL)
        for m in _methods(grid):
            row: list[Any] = [task, m]
            for v in _row_values(table, m, budgets):
                p = _pct(v, ref)
                row += ["" if v is None else round(v, 4), "" if p is None else round(p, 2)]
            rows.append(row)
    with open(out / SUMMARY_CSV, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_heatmaps(
    out: Path,
    samples: Sequence[Sample],
    grid: Sequence[Configuration],
    records: Sequence[dict[str, Any]],
    title: str,
) -> list[Path]:
    """NIAH: one heatmap per configuration (samples need ``meta["length"]`` and ``meta["depth"]``)."""
    from dynamickv.eval import niah

    if not all("length" in s.meta and "depth" in s.meta for s in samples):
        return []
    by_key = {record_key(r): r for r in reversed(records)}
    paths = []
    for c in grid:
        cells: dict[tuple[int, float], list[float]] = {}
        for s in samples:
            r = by_key.get((sample_uid(s), c.method, c.budget_key))
            if r is not None:
                cells.setdefault((int(s.meta["length"]), float(s.meta["depth"])), []).append(
                    float(r["score"])
                )
        if not cells:
            continue
        scores = {k: sum(v) / len(v) for k, v in cells.items()}
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", c.method)  # specs hold ':', ';' and '='
        name = label if c.budget is None else f"{label}_B{c.budget_key}"
        paths.append(niah.heatmap(scores, out / HEATMAP_DIR / f"{name}.png", f"{title} {c.label}".strip()))
    return paths


def finalize(
    out: str | Path,
    samples: Sequence[Sample],
    grid: Sequence[Configuration],
    records: Sequence[dict[str, Any]] | None,
    scorer: Scorer,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``summary.md``, ``summary.csv`` (and NIAH heatmaps); return the metrics."""
    out = Path(out)
    if records is None:
        records = load_predictions(out / PREDICTIONS_FILE, repair=False)
    metrics = compute_metrics(samples, grid, records, scorer, config)
    _write_json(out / METRICS_FILE, metrics)
    write_summary(out, metrics, grid)
    if scorer.name == "niah":
        title = str((config or {}).get("model") or "")
        write_heatmaps(out, samples, grid, records, title)
    return metrics


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = [
    "BENCHMARKS",
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
    "merge_shards",
    "method_params",
    "run",
    "sample_uid",
    "split_prompt",
    "write_heatmaps",
    "write_summary",
]

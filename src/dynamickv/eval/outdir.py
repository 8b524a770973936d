"""The output folder: its configuration, the predictions file (append-only, resumable), shard merging."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dynamickv.budget import Budget, parse_budget
from dynamickv.errors import InputError
from dynamickv.eval import distributed
from dynamickv.eval.grid import (
    FULL,
    Configuration,
    _check_windowkv_mode,
    normalize_budgets,
    normalize_methods,
)
from dynamickv.eval.runlock import LOCK_FILE
from dynamickv.eval.scorers import get_scorer

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
HEATMAP_DIR = "heatmaps"

#: config.json keys that may change between a run and its resumption (a change of software is
#: recorded beside the original, see :func:`record_software`).
NOT_COMPARED = frozenset({"device", "created", "software", "resumed_with"})
#: config.json keys compared only when both runs recorded them (runs made before they existed resume).
COMPARED_IF_RECORDED = frozenset({"model_fingerprint"})
#: Prediction-record fields that vary from run to run (timings).
TIMING_FIELDS = frozenset({"seconds", "prefill_seconds"})


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


def software(model: Any = None) -> dict[str, str]:
    """What made the predictions: dynamickv, torch and transformers releases, and the accelerator the
    model sits on. A table is only reproducible with these, and the same code can answer differently
    under another release (bf16 kernels, tokenizer conversion)."""
    import torch
    import transformers

    from dynamickv import __version__

    names = []
    for p in [] if model is None else model.parameters():
        d = p.device
        name = torch.cuda.get_device_name(d) if d.type == "cuda" else d.type
        if name not in names:
            names.append(name)
    return {
        "dynamickv": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerator": ", ".join(names) or "cpu",
    }


def describe_software(sw: dict[str, str]) -> str:
    """``dynamickv 0.1.0, torch 2.11.0, transformers 5.17.0, on NVIDIA H200``."""
    parts = [f"{k} {sw[k]}" for k in ("dynamickv", "torch", "transformers") if k in sw]
    return ", ".join(parts) + (f", on {sw['accelerator']}" if sw.get("accelerator") else "")


def record_software(config_path: Path, current: dict[str, str]) -> str | None:
    """On resume: if ``current`` differs from the software the run was made with, add it to the
    stored configuration's ``resumed_with`` and return a line saying so (else ``None``). The run may
    go on (its predictions so far stay valid), but its table must say that two releases made it."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    made_with = config.get("software")
    if made_with is None or made_with == current:
        return None
    later = config.setdefault("resumed_with", [])
    if current not in later:
        later.append(current)
        _write_json(config_path, config)
    return (
        f"this run was made with {describe_software(made_with)}; it goes on with "
        f"{describe_software(current)} (both are recorded in {CONFIG_FILE} and summary.md)"
    )


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


def read_jsonl(path: str | Path, repair: bool = True) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every line of a JSON-lines file that is appended to one line at
    a time.

    A last line without its newline (a process killed mid-write) is dropped, and with ``repair`` cut
    from the file so that appending continues on a clean line. A corrupt line elsewhere is an error.
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
    out = []
    for lineno, line in enumerate(data[:end].split(b"\n"), start=1):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except ValueError as exc:
                raise InputError(f"{path}:{lineno}: corrupt record ({exc})") from None
    return out


def load_predictions(path: str | Path, repair: bool = True) -> list[dict[str, Any]]:
    """The records of a predictions file (:func:`read_jsonl`), first occurrence of each (uid,
    method, budget) kept."""
    records: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for lineno, record in read_jsonl(path, repair):
        try:
            key = record_key(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{lineno}: corrupt prediction record ({exc})") from None
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


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

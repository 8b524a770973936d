"""Metrics (scores per task x method x budget, averages, % of FullKV), summary tables and heatmaps."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynamickv.eval.base import Sample
from dynamickv.eval.grid import FULL, REFERENCE, Configuration
from dynamickv.eval.outdir import (
    HEATMAP_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    _write_json,
    load_predictions,
    record_key,
)
from dynamickv.eval.prompts import sample_uid
from dynamickv.eval.scorers import Scorer


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
        "protocol": (config or {}).get("protocol"),
        "software": (config or {}).get("software"),
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
    if (config or {}).get("resumed_with"):
        metrics["resumed_with"] = config["resumed_with"]
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


def _protocol_line(protocol: str | None) -> str:
    from dynamickv.eval.prompts import PROTOCOLS

    if protocol is None:
        return "not recorded (runs before protocols existed used the chat template: 'chat')"
    return f"{protocol}, {PROTOCOLS.get(protocol, '')}"


def _software_lines(metrics: dict[str, Any]) -> list[str]:
    from dynamickv.eval.outdir import describe_software

    if not metrics.get("software"):
        return []  # a run made before dynamickv recorded it
    lines = [f"Software: {describe_software(metrics['software'])}."]
    lines += [f"Resumed with: {describe_software(sw)}." for sw in metrics.get("resumed_with", [])]
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
        f"Protocol: {_protocol_line(metrics.get('protocol'))}.",
        "",
        *_software_lines(metrics),
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

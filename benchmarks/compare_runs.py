"""Two evaluation runs of the same samples, record by record: did the code between them change what
is kept, what is answered, or what is scored?

    python benchmarks/compare_runs.py OLD_RUN NEW_RUN [--out compare.json]

Why: the batched decoder and the compression path change between GPU runs, and a table of averages
can hide a regression that moves answers both ways. Two runs of the same ``config.json`` samples
(same fingerprint) are matched on (sample, method, budget); for each cell the script counts the
records present in both and those whose kept tokens per layer and KV head, answer text and score are
identical. bf16 kernels of a different batch shape round differently, so answer text may part late
in a long answer while the kept tokens (decided at prefill) and the score stay the same: the kept
tokens are the check of the compression, the scores the check of what a table reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

FIELDS = ("kept", "prediction", "score")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _records(run: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    from dynamickv.eval.outdir import load_predictions, record_key

    return {record_key(r): r for r in load_predictions(run / "predictions.jsonl", repair=False)}


def _kept(r: dict[str, Any]) -> Any:
    return r.get("kept_tokens_per_layer_head", r.get("kept_tokens_per_layer"))


def compare(old: Path, new: Path) -> dict[str, Any]:
    for run in (old, new):
        for name in ("config.json", "predictions.jsonl"):
            if not (run / name).is_file():
                _fail(f"{run} is not an evaluation run: it has no {name}")
    configs = [json.loads((run / "config.json").read_text()) for run in (old, new)]
    digests = [c.get("samples_digest") for c in configs]
    if digests[0] != digests[1]:
        _fail(f"{old} and {new} are not runs of the same samples (their samples_digest differs)")
    a, b = _records(old), _records(new)
    cells: dict[str, dict[str, int]] = defaultdict(lambda: {"both": 0, **{f: 0 for f in FIELDS}})
    moved: dict[str, list[float]] = defaultdict(list)
    for key in sorted(a.keys() & b.keys()):
        ra, rb = a[key], b[key]
        cell = cells[f"{key[1]}@{key[2]}"]
        cell["both"] += 1
        cell["kept"] += _kept(ra) == _kept(rb)
        cell["prediction"] += ra["prediction"] == rb["prediction"]
        cell["score"] += ra.get("score") == rb.get("score")
        moved[f"{key[1]}@{key[2]}"].append(float(rb.get("score") or 0) - float(ra.get("score") or 0))
    total = {f: sum(c[f] for c in cells.values()) for f in ("both", *FIELDS)}
    for name, cell in cells.items():
        d = moved[name]
        cell["mean_score_change"] = sum(d) / len(d)
    return {
        "old": str(old),
        "new": str(new),
        "only_old": len(a.keys() - b.keys()),
        "only_new": len(b.keys() - a.keys()),
        "total": total,
        "cells": dict(sorted(cells.items())),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['old']} -> {result['new']}: identical of the records in both "
        f"(only in old {result['only_old']}, only in new {result['only_new']})",
        f"{'method@budget':34} {'both':>5} {'kept':>5} {'answer':>7} {'score':>6} {'mean d score':>13}",
    ]
    for name, c in result["cells"].items():
        lines.append(
            f"{name:34} {c['both']:5d} {c['kept']:5d} {c['prediction']:7d} {c['score']:6d} "
            f"{c['mean_score_change']:+13.2f}"
        )
    t = result["total"]
    lines.append(f"{'all':34} {t['both']:5d} {t['kept']:5d} {t['prediction']:7d} {t['score']:6d}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path, help="write the counts as JSON")
    args = ap.parse_args()
    result = compare(args.old, args.new)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

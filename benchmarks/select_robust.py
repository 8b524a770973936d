"""Pick the recommended robust DynamicKV variant from the dev runs, by a rule fixed before they ran.

    python benchmarks/select_robust.py docs/results/quality/dev_smol docs/results/quality/dev_qwen

The rule (written down, and committed, before the GPU run it is applied to):

* candidates: every method spec of the runs that starts with ``dynamickv`` and is not the faithful
  reference (``dynamickv`` itself, ``dynamickv:allocation=candidates``) and not head-adaptive (that is
  issue 15's option, measured on its own);
* score: the mean, over the runs given (one per model) and the budgets 64, 128 and 256, of the RULER
  average over tasks (the harness's ``metrics.json`` ``average``);
* the highest score wins; a tie (within 0.05) goes to the spec with fewer parameters set.

The dev runs use seed 1001, the reported runs seed 2002: the choice never sees the samples it is
reported on. Prints the ranking and writes it as JSON next to the first run (``selection.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BUDGETS = ("64", "128", "256")
EXCLUDED = {"dynamickv", "dynamickv:allocation=candidates"}


def candidates(metrics: dict) -> list[str]:
    return [
        m
        for m in metrics["average"]
        if m.startswith("dynamickv") and m not in EXCLUDED and "heads=adaptive" not in m
    ]


def rank(runs: list[Path]) -> list[dict]:
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    names = sorted(set.intersection(*(set(candidates(m)) for m in metrics)))
    rows = []
    for name in names:
        cells = [m["average"][name].get(b) for m in metrics for b in BUDGETS]
        if any(c is None for c in cells):
            continue
        params = name.count("=")
        rows.append({"spec": name, "score": sum(cells) / len(cells), "params": params, "cells": cells})
    rows.sort(key=lambda r: (-round(r["score"] / 0.05), r["params"], r["spec"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Rank the DynamicKV variants of dev runs (rule in the docstring)."
    )
    ap.add_argument("runs", nargs="+", type=Path, help="eval output folders, one per model")
    runs = ap.parse_args().runs
    for r in runs:
        if not (r / "metrics.json").is_file():
            raise SystemExit(f"error: {r} has no metrics.json (run `dynamickv eval` there first)")
    rows = rank(runs)
    for r in rows:
        print(f"{r['score']:7.2f}  {r['spec']}")
    (runs[0] / "selection.json").write_text(
        json.dumps({"runs": [str(r) for r in runs], "budgets": BUDGETS, "ranking": rows}, indent=1)
    )
    print(f"recommended: {rows[0]['spec']}" if rows else "no candidate")


if __name__ == "__main__":
    main()

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

``--against SPEC``: the second rule (2026-11-29, fourth session, committed before the screen it
ranks), for issue 12's target "never below our best uniform method at B = 64, 128 or 256":

* candidates: every method of the runs but ``fullkv``, the faithful references and ``SPEC`` itself
  (head-adaptive specs included; in the first screen every such method was a DynamicKV variant);
* per run and budget, ``d`` = the candidate's RULER average minus ``SPEC``'s (the uniform method);
* score: the *smallest* ``d`` over the runs and budgets (the worst case the target is about); a tie
  within 0.05 goes to the larger mean ``d``, then to fewer parameters.

The screen runs (``benchmarks/gpu_allocation_screen.sh``) use seed 4004; the winner is then run on
seed 5005, which no rule has seen.
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


def rank_against(metrics: list[dict], uniform: str, budgets: tuple[str, ...] = BUDGETS) -> list[dict]:
    """The second rule (module docstring) over the runs' ``metrics.json``: worst-case difference from
    ``uniform``, highest first."""
    names = sorted(set.intersection(*(set(m["average"]) - EXCLUDED - {"fullkv", uniform} for m in metrics)))
    rows = []
    for name in names:
        try:
            diffs = [m["average"][name][b] - m["average"][uniform][b] for m in metrics for b in budgets]
        except (KeyError, TypeError):
            continue
        rows.append(
            {
                "spec": name,
                "worst": min(diffs),
                "mean": sum(diffs) / len(diffs),
                "params": name.count("="),
                "diffs": diffs,
            }
        )
    rows.sort(key=lambda r: (-round(r["worst"] / 0.05), -r["mean"], r["params"], r["spec"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Rank the DynamicKV variants of dev runs (rule in the docstring)."
    )
    ap.add_argument("runs", nargs="+", type=Path, help="eval output folders, one per model")
    ap.add_argument("--against", metavar="SPEC", help="the second rule: worst case against this uniform spec")
    ap.add_argument(
        "--budgets", default=",".join(BUDGETS), help="budgets the rule compares (default 64,128,256)"
    )
    args = ap.parse_args()
    runs = args.runs
    for r in runs:
        if not (r / "metrics.json").is_file():
            raise SystemExit(f"error: {r} has no metrics.json (run `dynamickv eval` there first)")
    budgets = tuple(args.budgets.split(",")) if args.against else BUDGETS
    if args.against:
        metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
        missing = [str(r) for r, m in zip(runs, metrics) if args.against not in m["average"]]
        if missing:
            raise SystemExit(f"error: {args.against!r} is not in {', '.join(missing)}")
        rows = rank_against(metrics, args.against, budgets)
        for r in rows:
            print(f"worst {r['worst']:+6.2f}  mean {r['mean']:+6.2f}  {r['spec']}")
    else:
        rows = rank(runs)
        for r in rows:
            print(f"{r['score']:7.2f}  {r['spec']}")
    name = "selection_against.json" if args.against else "selection.json"
    (runs[0] / name).write_text(
        json.dumps(
            {"runs": [str(r) for r in runs], "budgets": budgets, "against": args.against, "ranking": rows},
            indent=1,
        )
    )
    print(f"recommended: {rows[0]['spec']}" if rows else "no candidate")


if __name__ == "__main__":
    main()

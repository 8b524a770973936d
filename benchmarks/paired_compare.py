"""Paired comparison of two configurations of the same evaluation runs, sample by sample.

    python benchmarks/paired_compare.py RUN [RUN ...] --a SPEC --b SPEC [--out FILE.json]

Why: two methods scored on the same samples differ on few of them, and a difference of averages
says nothing about whether it is more than those few answers. For each run and budget this reports
the difference of the task-averaged scores (A - B, the benchmark's own average), a 95% interval
from a bootstrap that resamples samples within each task (2,000 draws, fixed seed), and on how many
samples A scored higher and lower than B. Only samples both configurations answered are used.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

DRAWS = 2000


def _scores(run: Path) -> dict[tuple[str, str, str], tuple[str, float]]:
    out = {}
    for line in (run / "predictions.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["method"], str(r["budget"]), r["uid"])] = (r["task"], float(r["score"]))
    return out


def _task_mean(by_task: dict[str, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


def compare(run: Path, a: str, b: str, seed: int = 0) -> list[dict]:
    scores = _scores(run)
    budgets = sorted({k[1] for k in scores if k[0] == a}, key=lambda x: int(x) if x.isdigit() else 0)
    rows = []
    for budget in budgets:
        uids = sorted(
            {k[2] for k in scores if k[:2] == (a, budget)} & {k[2] for k in scores if k[:2] == (b, budget)}
        )
        if not uids:
            continue
        diffs: dict[str, list[float]] = defaultdict(list)
        for uid in uids:
            task, sa = scores[(a, budget, uid)]
            diffs[task].append(sa - scores[(b, budget, uid)][1])
        rng = random.Random(seed)
        draws = sorted(
            _task_mean({t: [rng.choice(v) for _ in v] for t, v in diffs.items()}) for _ in range(DRAWS)
        )
        flat = [d for v in diffs.values() for d in v]
        rows.append(
            {
                "run": run.name,
                "budget": budget,
                "samples": len(uids),
                "a_minus_b": _task_mean(diffs),
                "ci95": [draws[int(0.025 * DRAWS)], draws[int(0.975 * DRAWS) - 1]],
                "a_higher": sum(d > 0 for d in flat),
                "a_lower": sum(d < 0 for d in flat),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--a", required=True, help="method spec as in predictions.jsonl")
    ap.add_argument("--b", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [r for run in args.runs for r in compare(run, args.a, args.b)]
    print(f"A = {args.a}\nB = {args.b}\n")
    print("| run | B | samples | A - B | 95% interval | A higher / lower |")
    print("|---|---:|---:|---:|---|---|")
    for r in rows:
        lo, hi = r["ci95"]
        print(
            f"| {r['run']} | {r['budget']} | {r['samples']} | {r['a_minus_b']:+.2f} | "
            f"[{lo:+.2f}, {hi:+.2f}] | {r['a_higher']} / {r['a_lower']} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"a": args.a, "b": args.b, "draws": DRAWS, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Paired comparison of two configurations of the same evaluation runs, sample by sample.

    python benchmarks/paired_compare.py RUN [RUN ...] --a SPEC --b SPEC [--out FILE.json] [--plot FILE.png]
    python benchmarks/paired_compare.py --from-json FILE.json --plot FILE.png   # redraw a saved comparison
    python benchmarks/paired_compare.py RUN --peer RUN/peer.*.jsonl --a dynamickv-auto --b kvpress-snapkv

``--peer``: kvpress's answers to the run's prompts (``benchmarks/kvpress_quality_peer.py``), scored
here sample by sample with the run's own scorer, so a kvpress press can be either side.

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

from figures import pyplot, save

DRAWS = 2000


def _scores(run: Path, peer: list[Path] = ()) -> dict[tuple[str, str, str], tuple[str, float]]:
    out = {}
    answers = {}
    for line in (run / "predictions.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["method"], str(r["budget"]), r["uid"])] = (r["task"], float(r["score"]))
            answers[r["uid"]] = r.get("answers")
    if peer:
        from dynamickv.eval.base import Sample
        from dynamickv.eval.runner import get_scorer

        scorer = get_scorer(json.loads((run / "config.json").read_text())["benchmark"])
        for path in peer:
            for line in path.read_text().splitlines():
                r = json.loads(line) if line.strip() else {}
                if answers.get(r.get("uid")) is not None and "error" not in r:
                    # the scorers read a sample's task and answers (and a length for breakdowns)
                    sample = Sample(r["task"], 0, "", answers[r["uid"]], 0, "")
                    got = scorer.task(r["task"], [sample], [r["prediction"]])[0]
                    out[(r["method"], str(r["budget"]), r["uid"])] = (r["task"], float(got))
    return out


def _task_mean(by_task: dict[str, list[float]]) -> float:
    return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


def compare(run: Path, a: str, b: str, seed: int = 0, peer: list[Path] = ()) -> list[dict]:
    scores = _scores(run, peer)
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


def plot(rows: list[dict], a: str, b: str, path: Path) -> Path:
    """A forest plot: one line per run and budget, the difference A - B with its 95% interval, so
    which sets are clearly ahead, level or behind is seen at a glance."""
    plt = pyplot()

    budgets = sorted({str(r["budget"]) for r in rows}, key=lambda x: int(x) if x.isdigit() else 0)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(runs) * len(budgets) + 1.4))
    y, ticks, labels = 0, [], []
    colors = dict(
        zip(budgets, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False)
    )
    for run in runs:
        for budget in budgets:
            row = next((r for r in rows if r["run"] == run and str(r["budget"]) == budget), None)
            if row is None:
                continue
            lo, hi = row["ci95"]
            ax.errorbar(
                row["a_minus_b"],
                y,
                xerr=[[row["a_minus_b"] - lo], [hi - row["a_minus_b"]]],
                fmt="o",
                color=colors.get(budget, "black"),
                capsize=3,
            )
            ticks.append(y)
            labels.append(f"{run}  B={budget}  ({row['a_higher']} / {row['a_lower']})")
            y -= 1
        y -= 0.5
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("A - B, task-averaged (95% bootstrap interval); (samples A ahead / behind)", fontsize=8)
    ax.set_title(f"A = {a}\nB = {b}", fontsize=8)
    save(fig, path, dpi=120)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--a", help="method spec as in predictions.jsonl")
    ap.add_argument("--b")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path, help="draw the comparison as a forest plot (PNG)")
    ap.add_argument("--from-json", type=Path, help="a saved comparison (--out) to draw instead of runs")
    ap.add_argument("--peer", type=Path, nargs="+", default=[], help="kvpress answers to one run's prompts")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if not args.plot:
            ap.error("--from-json needs --plot")
        print(plot(saved["rows"], saved["a"], saved["b"], args.plot))
        return
    if not args.runs or not args.a or not args.b:
        ap.error("give one or more runs with --a and --b, or --from-json")
    if args.peer and len(args.runs) != 1:
        ap.error("--peer goes with one run")
    rows = [r for run in args.runs for r in compare(run, args.a, args.b, peer=args.peer)]
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
    if args.plot:
        print(plot(rows, args.a, args.b, args.plot))


if __name__ == "__main__":
    main()

"""Each layer's share of the budget, model against model, from ``layer_budgets.py`` runs.

    python benchmarks/layer_shares_plot.py docs/results/layer_budgets_{smol,qwen05,qwen15}_vt.json \
        --method dynamickv-preference --out docs/results/layer_shares_vt.png

Why: ``dynamickv-auto`` gives layer-adaptive budgets to Qwen2 models only, because the preference
shares were measured ahead of uniform budgets there and not on SmolLM2 (docs/evaluation.md). This
draws what the shares are on each model: kept tokens of each layer over ``B`` (1 is uniform), against
relative depth, one panel per budget. It prints how uneven each profile is (the coefficient of
variation of the kept counts, 0 for uniform) and the share of the budget held by the first third of
the layers.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from statistics import mean, pstdev

from figures import pyplot, save


def profiles(path: Path, method: str) -> tuple[str, dict[int, list[float]]]:
    """``(model, {budget: kept / B per layer, averaged over the run's samples})``."""
    data = json.loads(path.read_text())
    words = shlex.split(data["meta"]["command"])
    model = words[words.index("--model") + 1] if "--model" in words else path.stem
    by_budget: dict[int, list[list[int]]] = {}
    for row in data["rows"]:
        if row["method"] == method:
            by_budget.setdefault(row["budget"], []).append(row["kept"])
    if not by_budget:
        raise SystemExit(f"error: {path} has no rows of {method!r}")
    return model, {
        b: [mean(col) / b for col in zip(*rows, strict=True)] for b, rows in sorted(by_budget.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="layer_budgets.py JSON files, one per model")
    ap.add_argument("--method", default="dynamickv-preference")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    plt = pyplot()

    runs = [profiles(p, args.method) for p in args.runs]
    budgets = sorted({b for _, by_budget in runs for b in by_budget})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False, sharey=True)
    print(f"{'model':<22}{'B':>6}{'CV':>8}{'first third':>14}{'min/B':>8}{'max/B':>8}")
    for ax, budget in zip(axes[0], budgets, strict=True):
        for model, by_budget in runs:
            share = by_budget.get(budget)
            if share is None:
                continue
            n = len(share)
            depth = [(i + 0.5) / n for i in range(n)]
            ax.plot(depth, share, marker="o", markersize=3, label=f"{model} ({n} layers)")
            third = sum(share[: n // 3]) / sum(share)
            print(
                f"{model:<22}{budget:>6}{pstdev(share) / mean(share):>8.2f}{third:>14.2f}"
                f"{min(share):>8.2f}{max(share):>8.2f}"
            )
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="uniform")
        ax.set_title(f"{args.method}, B = {budget}", fontsize=10)
        ax.set_xlabel("relative depth of the layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("kept tokens / B (window included)")
    axes[0][-1].legend(fontsize=8)
    print(save(fig, args.out, dpi=110))


if __name__ == "__main__":
    main()

"""Score against budget for every method of a quality grid, one panel per run, kvpress beside it.

    python benchmarks/grid_plot.py docs/results/quality/grid_1130/final_smol \
        docs/results/quality/grid_1130/final_qwen --out docs/results/quality/grid_1130/grid.png

Reads each run's ``peer_metrics.json`` (written by ``benchmarks/quality_peer.py score``: both
libraries on the samples every configuration answered) or, without one, the harness's
``metrics.json``. The catalog's methods and kvpress's presses are drawn in colour, every other
configuration (ablations) thin and grey, so the lines stay readable; FullKV is a dashed line. It also
prints the plotted table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: drawn in colour (the papers' methods, this library's named variants, and every kvpress press);
#: every other configuration is a thin grey line
SHOWN = (
    "snapkv-decay",
    "dynamickv-preference",
    "dynamickv-robust",
    "snapkv-forward",
    "dynamickv",
    "cake",
    "snapkv",
    "pyramidkv",
    "windowkv",
    "h2o",
    "streamingllm",
    "adakv",
)


def cells(run: Path) -> tuple[str, dict[str, dict[str, float]], int]:
    """``(title, {method: {budget: score}}, samples)`` of one run."""
    peer = run / "peer_metrics.json"
    if peer.is_file():
        m = json.loads(peer.read_text())
        table = {
            name: {b: v["average"] for b, v in entry["budgets"].items()}
            for name, entry in m["methods"].items()
        }
        return f"{m['model']}, {m['benchmark']} ({m['common_samples']} samples)", table, m["common_samples"]
    m = json.loads((run / "metrics.json").read_text())
    table = {name: dict(by_budget) for name, by_budget in m["scores"][m["benchmark"]].items()}
    n = m["n"][m["benchmark"]]
    return f"{m['model']}, {m['benchmark']} ({n} samples)", table, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.runs), figsize=(7.5 * len(args.runs), 4.6), squeeze=False)
    for ax, run in zip(axes[0], args.runs, strict=True):
        title, table, _ = cells(run)
        print(f"== {title}")
        full = table.pop("fullkv", {}).get("full")
        if full is not None:
            ax.axhline(full, color="black", linestyle="--", linewidth=1, label=f"fullkv {full:.1f}")
        colours = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
        shown = [n for n in table if n in SHOWN or n.startswith("kvpress")]
        order = sorted(shown, key=lambda n: (n.startswith("kvpress"), SHOWN.index(n) if n in SHOWN else 0, n))
        for name, by_budget in sorted(table.items()):
            points = sorted((int(b), v) for b, v in by_budget.items() if b.isdigit())
            if not points:
                continue
            print(f"  {name:50s} " + "  ".join(f"B={b}: {v:5.1f}" for b, v in points))
            xs, ys = zip(*points, strict=True)
            peer = name.startswith("kvpress")
            style = {"marker": "s" if peer else "o", "linestyle": ":" if peer else "-"}
            if name in order:
                colour = colours[order.index(name) % len(colours)]
                ax.plot(
                    xs,
                    ys,
                    label=name,
                    color=colour,
                    linewidth=2.2 if order.index(name) < 2 else 1.3,
                    markersize=7 if peer else 5,
                    **style,
                )
            else:
                ax.plot(xs, ys, color="0.82", linewidth=0.8, zorder=0, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks([64, 128, 256], ["64", "128", "256"])
        ax.set_xlabel("budget B (tokens per layer, window included)")
        ax.set_ylabel("RULER / NIAH score")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("raw protocol (the papers'): whole prompt compressed, greedy; grey: ablations", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()

"""Score against budget for every method of a quality grid, one panel per run, kvpress beside it.

    python benchmarks/grid_plot.py docs/results/quality/grid_1130/final_smol \
        docs/results/quality/grid_1130/final_qwen --out docs/results/quality/grid_1130/grid.png
    Q=docs/results/quality/q15_1130   # two steps on the same prompts share a panel with "+":
    python benchmarks/grid_plot.py $Q/q15_ruler+$Q/q15_ruler_more $Q/q15_niah --out $Q/grid.png
    # a folder holding only a peer_metrics.json (quality_peer.py score --out) is a panel too

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

from figures import pyplot, save

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
        where = "".join(
            f", {label} {value}"
            for label, value in (("L", ",".join(map(str, m.get("lengths") or []))), ("seed", m.get("seed")))
            if value
        )
        return (
            f"{m['model']}, {m['benchmark']}{where} ({m['common_samples']} samples)",
            table,
            m["common_samples"],
        )
    m = json.loads((run / "metrics.json").read_text())
    # the benchmark's average over its tasks (RULER's 13; NIAH's one)
    table = {name: dict(by_budget) for name, by_budget in m["average"].items()}
    n = sum(m["n"].values())
    return f"{m['model']}, {m['benchmark']} ({n} samples)", table, n


def panel(runs: list[Path]) -> tuple[str, dict[str, dict[str, float]]]:
    """One panel's title and table: runs joined by ``+`` on the command line are the same prompts
    answered by more configurations in another step, so their tables merge (the first run's title)."""
    title, table, _ = cells(runs[0])
    for run in runs[1:]:
        _, more, _ = cells(run)
        table.update({name: v for name, v in more.items() if name not in table})
    return title, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders; A+B puts two runs of the same prompts in one panel")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--columns", type=int, default=0, help="panels per row (default: all in one row)")
    args = ap.parse_args()
    if args.columns < 0:
        ap.error(f"--columns must be 0 (one row) or more, got {args.columns}")

    plt = pyplot()

    panels = [[Path(p) for p in arg.split("+")] for arg in args.runs]
    columns = min(args.columns or len(panels), len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, runs in zip(axes.flat, panels, strict=False):
        title, table = panel(runs)
        print(f"== {title}")
        full = table.pop("fullkv", {}).get("full")
        if full is not None:
            ax.axhline(full, color="black", linestyle="--", linewidth=1, label=f"fullkv {full:.1f}")
        # tab10, then six colours unlike any of it (Dark2 repeats tab10's orange and green)
        extra_colours = ("black", "#8c6d31", "#393b79", "#e7969c", "#637939", "#7b4173")
        colours = (*plt.get_cmap("tab10").colors, *extra_colours)
        # a method keeps its colour in every panel: the catalog's by their place in SHOWN, kvpress's
        # presses after them
        presses = sorted(n for n in table if n.startswith("kvpress") and n not in SHOWN)
        slot = {n: i for i, n in enumerate((*SHOWN, *presses))}
        for name, by_budget in sorted(table.items()):
            points = sorted((int(b), v) for b, v in by_budget.items() if b.isdigit())
            if not points:
                continue
            print(f"  {name:50s} " + "  ".join(f"B={b}: {v:5.1f}" for b, v in points))
            xs, ys = zip(*points, strict=True)
            peer = name.startswith("kvpress")
            style = {"marker": "s" if peer else "o", "linestyle": ":" if peer else "-"}
            if name in slot:
                ax.plot(
                    xs,
                    ys,
                    label=name,
                    color=colours[slot[name] % len(colours)],
                    linewidth=2.2 if name in SHOWN[:2] else 1.3,
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
    print(save(fig, args.out, dpi=110))


if __name__ == "__main__":
    main()

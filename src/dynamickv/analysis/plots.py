"""The retention plots (PNG, matplotlib's Agg backend), drawn from ``retention.jsonl`` records.

* ``retention_boxplots.png``: per layer, the spread over samples of the tokens DynamicKV kept (divided
  by the budget), one panel per task category;
* ``retention_means.png``: the mean per-layer profile of each category on one chart;
* ``task_profiles.png``: the mean per-layer profile of each task, as a tasks x layers heatmap;
* ``positions_map.png``: which prompt positions one sample kept, layer by layer (needle marked);
* ``budget_shapes.png``: DynamicKV's per-layer budgets beside PyramidKV's and WindowKV's fixed shapes;
* ``head_retention.png``: per-head retention, a layer x KV head heatmap of the tokens each head kept
  (divided by the budget, mean over samples), where head-adaptive methods differ from uniform ones.

Titles name the method the records were made with (``method`` field; DynamicKV by default).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .retention import profiles, task_dependence

COLORS = {
    "qa": "tab:blue",
    "summarization": "tab:green",
    "few-shot": "tab:purple",
    "synthetic": "tab:orange",
    "code": "tab:red",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _categories(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        out.setdefault(r["category"], []).append(i)
    return out


def _budget_label(records: Sequence[dict[str, Any]]) -> str:
    budgets = sorted({r["budget"] for r in records})
    return f"B={budgets[0]}" if len(budgets) == 1 else f"B={budgets[0]}..{budgets[-1]}"


def _method(records: Sequence[dict[str, Any]]) -> str:
    names = sorted({str(r.get("method", "dynamickv")) for r in records})
    return "DynamicKV" if names == ["dynamickv"] else ", ".join(names)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return path


def boxplots(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Per-layer retention (kept / budget) over samples, one panel per category."""
    plt = _plt()
    x = profiles(records)
    cats = _categories(records)
    layers = np.arange(x.shape[1])
    fig, axes = plt.subplots(
        len(cats), 1, figsize=(10, 2.6 * len(cats) + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for ax, (cat, idx) in zip(axes[:, 0], cats.items(), strict=True):
        ax.boxplot(
            [x[idx, j] for j in layers],
            positions=layers,
            widths=0.6,
            showfliers=True,
            flierprops={"markersize": 3},
            medianprops={"color": COLORS.get(cat, "k")},
        )
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="uniform (every layer B)")
        ntasks = len({records[i]["task"] for i in idx})
        ax.set_title(f"{cat}: {len(idx)} samples, {ntasks} task(s)", fontsize=10, loc="left")
        ax.set_ylabel("kept / budget")
        ax.legend(loc="upper right", fontsize=8)
    ticks = layers[:: max(1, len(layers) // 15)]
    for ax in axes[:, 0]:
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    axes[-1, 0].set_xlabel("layer")
    fig.suptitle(
        f"{_method(records)} tokens kept per layer ({_budget_label(records)}) {title}".strip(), fontsize=11
    )
    return _save(fig, path)


def mean_lines(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One line per category: the mean per-layer profile (band: +-1 std over samples); thin: per task."""
    plt = _plt()
    x = profiles(records)
    cats = _categories(records)
    layers = np.arange(x.shape[1])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    tasks: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        tasks.setdefault(r["task"], []).append(i)
    for _task, idx in tasks.items():
        ax.plot(
            layers,
            x[idx].mean(axis=0),
            color=COLORS.get(records[idx[0]]["category"], "k"),
            lw=0.6,
            alpha=0.35,
        )
    for cat, idx in cats.items():
        m, s = x[idx].mean(axis=0), x[idx].std(axis=0)
        color = COLORS.get(cat, "k")
        ax.plot(layers, m, color=color, lw=2.2, label=f"{cat} (n={len(idx)})")
        ax.fill_between(layers, m - s, m + s, color=color, alpha=0.15)
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="uniform")
    td = task_dependence(records, "category", permutations=0)
    td_task = task_dependence(records, "task", permutations=0)
    note = []
    if td["f"] is not None:
        note.append(f"F(category)={td['f']:.2f}")
    if td_task["f"] is not None:
        note.append(f"F(task)={td_task['f']:.2f}")
    ax.set_title(
        f"Mean {_method(records)} retention per layer by category ({_budget_label(records)}) {title}\n"
        f"thick: category mean, band: +-1 std, thin: per-task means   {'  '.join(note)}",
        fontsize=10,
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("kept / budget")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def _ratio_heatmap(ax, grid: np.ndarray):
    """``grid`` (ratios to the budget) on a symmetric log colour scale, white at 1."""
    from matplotlib.colors import LogNorm

    lim = max(float(np.abs(np.log(np.clip(grid, 1e-3, None))).max()), np.log(1.5))
    return ax.imshow(
        grid.clip(np.exp(-lim), np.exp(lim)),
        aspect="auto",
        cmap="RdBu_r",
        norm=LogNorm(np.exp(-lim), np.exp(lim)),
        interpolation="nearest",
    )


def task_profiles(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Heatmap, tasks x layers: each task's mean kept / budget (log colour scale, white = uniform)."""
    plt = _plt()
    x = profiles(records)
    tasks: dict[str, list[int]] = {}
    for r in sorted(range(len(records)), key=lambda i: (records[i]["category"], records[i]["task"])):
        tasks.setdefault(records[r]["task"], []).append(r)
    grid = np.array([x[idx].mean(axis=0) for idx in tasks.values()])
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(tasks) + 1.6))
    im = _ratio_heatmap(ax, grid)
    labels = [f"{t} ({records[idx[0]]['category']}, n={len(idx)})" for t, idx in tasks.items()]
    ax.set_yticks(range(len(tasks)), labels=labels, fontsize=8)
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label="kept / budget (log)")
    td = task_dependence(records, "task", permutations=0)
    score = f"   F(task)={td['f']:.2f}" if td["f"] is not None else ""
    ax.set_title(
        f"Mean {_method(records)} retention per task and layer ({_budget_label(records)}) {title}{score}",
        fontsize=10,
    )
    return _save(fig, path)


def pick_sample(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A sample to map: the first with a known needle, else the longest prompt."""
    for r in records:
        if r.get("needle_spans"):
            return r
    return max(records, key=lambda r: r["prompt_tokens"])


def positions_map(record: dict[str, Any], path: Path, title: str = "") -> Path:
    """Layer x prompt-position map of the tokens KV head 0 kept (needle span marked)."""
    plt = _plt()
    n, layers = record["prompt_tokens"], record["layers"]
    grid = np.zeros((len(layers), n), dtype=np.uint8)
    for j, pos in enumerate(record["positions"]):
        grid[j, [p for p in pos if 0 <= p < n]] = 1
    # bin columns so that a kept token stays visible at the figure's resolution
    bins = min(n, 800)
    edges = np.linspace(0, n, bins + 1).astype(int)
    binned = np.stack(
        [grid[:, a:b].max(axis=1) if b > a else grid[:, a] for a, b in itertools.pairwise(edges)],
        1,
    )
    fig, (ax, axk) = plt.subplots(
        1, 2, figsize=(11, 0.17 * len(layers) + 1.8), width_ratios=[5, 1], sharey=True
    )
    ax.imshow(
        binned, aspect="auto", cmap="Greys", interpolation="nearest", extent=(0, n, len(layers) - 0.5, -0.5)
    )
    for k, (a, b) in enumerate(record.get("needle_spans") or []):
        ax.axvspan(a, max(b, a + n / 400), color="red", alpha=0.35, label="needle" if k == 0 else None)
    if record.get("needle_spans"):
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("prompt position (token)")
    ax.set_ylabel("layer")
    ax.set_yticks(range(0, len(layers), max(1, len(layers) // 10)))
    ax.set_yticklabels([layers[i] for i in range(0, len(layers), max(1, len(layers) // 10))])
    ax.set_title(
        f"{record['uid']} ({record['category']}, {n} tokens): positions kept by KV head 0 (black) {title}",
        fontsize=10,
    )
    axk.barh(range(len(layers)), record["kept_per_layer"], color="tab:gray")
    axk.axvline(record["budget"], color="k", ls="--", lw=1)
    axk.set_xlabel(f"kept (B={record['budget']})")
    return _save(fig, path)


def fixed_shapes(num_layers: int, budget: int, prompt_tokens: int) -> dict[str, list[int]]:
    """PyramidKV's and WindowKV's (aggregation mode) per-layer budgets for this prompt length."""
    from dynamickv.methods import PrefillInfo, get_method

    info = PrefillInfo(prompt_tokens, prompt_tokens, num_layers, budget)
    out = {}
    for label, name, params in (
        ("PyramidKV", "pyramidkv", {}),
        ("WindowKV (aggregation)", "windowkv", {"mode": "aggregation"}),
    ):
        method = get_method(name, **params)
        try:
            method.validate(budget, num_layers)
        except Exception:
            continue
        method.begin(info)
        out[label] = [int(b) for b in method.budgets()]
    return out


def budget_shapes(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """DynamicKV's kept tokens per layer (mean, min-max over samples) beside the fixed shapes."""
    plt = _plt()
    kept = np.array([r["kept_per_layer"] for r in records], dtype=float)
    layers = np.arange(kept.shape[1])
    budget = int(np.median([r["budget"] for r in records]))
    n = int(np.median([r["prompt_tokens"] for r in records]))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.fill_between(
        layers,
        kept.min(axis=0),
        kept.max(axis=0),
        color="tab:blue",
        alpha=0.2,
        label="DynamicKV min-max over samples",
    )
    ax.plot(layers, kept.mean(axis=0), color="tab:blue", lw=2.2, label=f"DynamicKV mean (n={len(records)})")
    styles = {"PyramidKV": ("tab:red", "-."), "WindowKV (aggregation)": ("tab:green", ":")}
    for label, shape in fixed_shapes(len(layers), budget, n).items():
        color, ls = styles.get(label, ("k", "-"))
        ax.plot(layers, shape, color=color, ls=ls, lw=2, label=label)
    ax.axhline(budget, color="grey", ls="--", lw=1, label=f"uniform B={budget} (SnapKV, H2O)")
    ax.set_xlabel("layer")
    ax.set_ylabel("tokens kept per KV head")
    ax.set_title(
        f"Per-layer budgets: DynamicKV (measured) vs fixed shapes, prompt ~{n} tokens {title}", fontsize=10
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def head_profiles(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """``[layers, kv_heads]``: tokens each KV head kept divided by the budget, mean over samples."""
    x = np.array([np.asarray(r["kept_per_head"], dtype=float) / r["budget"] for r in records])
    return x.mean(axis=0)


def head_retention(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Heatmap, layers x KV heads: mean kept / budget of every head (log colour scale, white = B)."""
    plt = _plt()
    grid = head_profiles(records)
    layers, heads = grid.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.45 * heads, 12), 0.22 * layers + 1.8))
    im = _ratio_heatmap(ax, grid)
    ax.set_xticks(range(heads), labels=[str(h) for h in range(heads)], fontsize=8)
    step = max(1, layers // 16)
    ax.set_yticks(
        range(0, layers, step), labels=[str(records[0]["layers"][i]) for i in range(0, layers, step)]
    )
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="kept / budget (log)")
    spread = float(np.mean(grid.max(axis=1) / np.clip(grid.min(axis=1), 1e-9, None)))
    ax.set_title(
        f"{_method(records)} tokens per KV head ({_budget_label(records)}, n={len(records)}) {title}\n"
        f"mean max/min head ratio per layer: {spread:.2f}",
        fontsize=9,
    )
    return _save(fig, path)


def plot_all(records: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> list[Path]:
    """Every plot into ``out``; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        return []
    title = f"- {title}" if title else ""
    return [
        boxplots(records, out / "retention_boxplots.png", title),
        mean_lines(records, out / "retention_means.png", title),
        task_profiles(records, out / "task_profiles.png", title),
        positions_map(pick_sample(records), out / "positions_map.png", title),
        budget_shapes(records, out / "budget_shapes.png", title),
        head_retention(records, out / "head_retention.png", title),
    ]

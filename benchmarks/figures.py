"""Figures of the benchmark scripts: matplotlib on its file backend, and one way to write a figure.

Shared by ``grid_plot.py``, ``layer_shares_plot.py``, ``paired_compare.py`` and
``windowkv_mode_study.py``, so that every committed PNG is laid out, written and freed the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (these scripts only write files, often headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay ``fig`` out (inside ``rect``, figure fractions, when given), write it to ``path`` (creating
    its folder) and free it."""
    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path

"""H2O, in the prefill form the DynamicKV/WindowKV comparisons use."""

from __future__ import annotations

from dataclasses import dataclass

from ..heads import HeadBudgets
from .base import Method


@dataclass
class H2O(HeadBudgets, Method):
    """Heavy-hitter oracle: keep the tokens with the most accumulated attention, plus the window.

    Paper: Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
    Language Models", NeurIPS 2023 (arXiv 2306.14048). As in the comparison code of the DynamicKV
    and WindowKV papers, attention is accumulated over the last ``window`` prompt queries (not over
    the whole prompt) and not pooled.

    Attributes:
        window: observation window (always kept), 32.
        heads: ``"uniform"`` or ``"adaptive"`` (Ada-KV's head budgets inside the layer budget, see
            :class:`~dynamickv.heads.HeadBudgets`); ``head_floor``: Ada-KV's safeguard, 0.2.
    """

    name = "h2o"
    summary = "heavy hitters: top accumulated attention of the last 32 queries, no pooling"
    paper = "Zhang et al. 2023, H2O: Heavy-Hitter Oracle (arXiv 2306.14048)"

    window: int = 32

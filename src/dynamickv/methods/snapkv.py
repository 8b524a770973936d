"""SnapKV: pooled observation-window attention, top tokens per KV head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BudgetError
from ..heads import HeadBudgets
from ..scoring import POOLINGS, Observation, Pooling
from .base import Method


@dataclass
class SnapKV(HeadBudgets, Method):
    """Keep the tokens the observation window attends to most, after pooling, plus the window.

    Paper: Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
    (arXiv 2404.14469).

    Attributes:
        window: observation window (always kept), 32.
        kernel: pooling kernel along positions, 7.
        pooling: ``"max"`` (the paper's comparisons) or ``"avg"``; ``"forward"`` and ``"decay"`` lend
            a token's score to the tokens after it (:func:`dynamickv.scoring.pool_scores`).
        quiet_sinks: the first that many tokens keep their own score but lend none when pooling, 0.
            Attention sinks score orders of magnitude above content, so a lending pooling would
            spend the budget on the tokens after them.
        heads: ``"uniform"`` (the paper) or ``"adaptive"`` (Ada-KV's head budgets, see
            :class:`~dynamickv.heads.HeadBudgets`); ``head_floor``: Ada-KV's safeguard, 0.2.
    """

    name = "snapkv"
    summary = "observation-window attention, max-pooled (k=7), top tokens per KV head, w=32"
    paper = "Li et al. 2024, SnapKV: LLM Knows What You are Looking for Before Generation (arXiv 2404.14469)"

    window: int = 32
    kernel: int = 7
    pooling: Pooling = "max"
    quiet_sinks: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise BudgetError(
                f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )
        if self.kernel < 1:
            raise BudgetError(f"{self.name}: kernel must be >= 1, got {self.kernel}")
        if self.quiet_sinks < 0:
            raise BudgetError(f"{self.name}: quiet_sinks must be >= 0, got {self.quiet_sinks}")

    def score(self, obs: Observation) -> torch.Tensor:
        return obs.scores(self.window, kernel=self.kernel, pooling=self.pooling, quiet_sinks=self.quiet_sinks)

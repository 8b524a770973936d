"""PyramidKV: SnapKV's selection under a budget that shrinks linearly with depth."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import capped_allocation
from ..errors import BudgetError
from ..scoring import Pooling
from .base import PrefillInfo
from .snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    """More tokens in the lower layers, fewer in the upper ones ("pyramidal information funnelling").

    Paper: Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
    Funneling" (arXiv 2406.02069). Per-layer non-window budgets run linearly from
    ``max = 2 (B - w) - min`` at layer 0 to ``min = (B - w) / beta`` at the last layer, so they
    average to ``B - w``; when the prompt is too short for that shape (``n < 2 (B - w)``) the
    budgets fall back to SnapKV's uniform ones, as in the authors' code. Rounding is exact.

    Attributes:
        window: observation window (always kept), 8.
        kernel: pooling kernel, 7.
        pooling: ``"max"``.
        beta: ratio between the average and the smallest layer budget, 20.
        heads: ``"adaptive"`` splits each layer's pyramid budget across KV heads (Ada-PyramidKV).
    """

    name = "pyramidkv"
    summary = "SnapKV selection with a linear per-layer pyramid (beta=20), w=8"
    paper = "Cai et al. 2024, PyramidKV: Pyramidal Information Funneling (arXiv 2406.02069)"

    window: int = 8
    kernel: int = 7
    pooling: Pooling = "max"
    beta: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1:
            raise BudgetError(f"pyramidkv: beta must be >= 1, got {self.beta}")

    def layer_budgets(self, info: PrefillInfo) -> list[int]:
        base = info.budget - self.window
        layers = info.num_layers
        room = info.n_eff - self.window
        if layers == 1 or room < 2 * base:
            return [info.budget] * layers
        lo = base / self.beta
        hi = 2 * base - lo
        steps = torch.arange(layers, dtype=torch.double) / (layers - 1)
        shares = hi - (hi - lo) * steps
        caps = torch.full((layers,), room, dtype=torch.long)
        alloc = capped_allocation(shares, base * layers, caps)
        return [int(a) + self.window for a in alloc]

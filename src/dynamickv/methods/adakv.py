"""Ada-KV (Ada-SnapKV): SnapKV's selection with head-adaptive budgets."""

from __future__ import annotations

from dataclasses import dataclass

from ..heads import DEFAULT_FLOOR, HeadMode
from ..scoring import Pooling
from .snapkv import SnapKV


@dataclass
class AdaKV(SnapKV):
    """SnapKV's pooled observation-window scores; each layer's ``B`` tokens per KV head on average
    are split across its KV heads by one top-k over all of them, with a per-head floor.

    Paper: Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
    Efficient LLM Inference" (arXiv 2407.11550), its Ada-SnapKV configuration (window 32, max
    pooling, kernel 7, ``floor_alpha`` 0.2). The same as ``snapkv:heads=adaptive``; layer-adaptive
    allocators compose with it the same way (``pyramidkv:heads=adaptive`` is Ada-PyramidKV). Unlike
    kvpress's ``AdaKVPress``, which masks dropped keys and keeps the whole cache, dropped tokens are
    freed: each head stores only what it keeps (:class:`~dynamickv.ragged.RaggedLayer`).

    Attributes:
        window: observation window (always kept by every head), 32.
        kernel: pooling kernel, 7.
        pooling: ``"max"``.
        heads: ``"adaptive"``.
        head_floor: every head keeps at least ``floor(head_floor * (B - w))`` non-window tokens, 0.2.
    """

    name = "adakv"
    summary = "SnapKV scores, layer budget split across KV heads by one top-k (Ada-KV), floor 0.2"
    paper = "Feng et al. 2024, Ada-KV: Adaptive Budget Allocation for KV Cache Eviction (arXiv 2407.11550)"

    window: int = 32
    heads: HeadMode = "adaptive"
    head_floor: float = DEFAULT_FLOOR
    kernel: int = 7
    pooling: Pooling = "max"

"""Head-adaptive budgets: split a layer's budget across its KV heads by one top-k over all of them.

Paper: Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for
Efficient LLM Inference" (arXiv 2407.11550; NeurIPS 2025).

Heads differ: some concentrate their attention on a few tokens, others spread it. A uniform split
gives every head the same count; Ada-KV instead takes the top ``H * base`` scores over *all* the
layer's ``H`` KV heads at once (``base`` = the layer's non-window tokens per head), so a head with
spread attention gets more tokens and a concentrated one fewer, and the layer total is unchanged.
A safeguard keeps every head from being starved: with ``alpha`` (``head_floor``) every head keeps
at least ``floor(alpha * base)`` tokens and the rest of the layer's tokens follow the top-k counts.
This is Ada-KV's own rule (``round(c_h * (1 - alpha) + floor(alpha * base))`` in its
``AdaptiveSnapKVCluster``, alpha = 0.2 in its scripts; kvpress's ``alpha_safeguard`` defaults to
0.2 too), done in integers with the largest-remainder rule so that the counts sum to ``H * base``
exactly. Each head then keeps its own top tokens, as many as its count. The window is kept by
every head on top of that, as in uniform selection.

Scores of different heads are comparable because each is a sum of softmax probabilities of the
same observation queries (averaged over the query heads of a KV head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .errors import BudgetError
from .selection import Selection, top_by_counts

HeadMode = Literal["uniform", "adaptive"]
#: Ada-KV's safeguard fraction (its scripts' ``floor_alpha``; kvpress's ``alpha_safeguard``).
DEFAULT_FLOOR = 0.2


def head_floor_tokens(base: torch.Tensor, alpha: float) -> torch.Tensor:
    """``floor(alpha * base)`` per row (a tiny epsilon absorbs binary rounding of ``alpha``)."""
    return torch.floor(base.double() * alpha + 1e-9).long()


def adaptive_head_counts(
    scores: torch.Tensor,
    base: torch.Tensor,
    alpha: float = DEFAULT_FLOOR,
    flat_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens each KV head keeps, ``[batch, kv_heads]``, summing to ``kv_heads * base[r]`` per row.

    Args:
        scores: ``[batch, kv_heads, m]`` token scores of one layer (``-inf``: never kept). A head never
            gets more tokens than it has finite scores; when a cut is needed the layer total moves to
            the other heads, so the sum stays exact while the row has ``H * base[r]`` finite scores.
        base: ``[batch]`` tokens per head on average (the layer's non-window budget of each row).
        alpha: the safeguard fraction (``0``: pure top-k counts, ``1``: uniform).
        flat_order: ``scores.reshape(batch, -1)`` sorted descending (stable), if already computed.

    Ties in the top-k go to the lower (head, position), as a stable sort of the flattened scores does.
    """
    b, h, m = scores.shape
    base = base.to(device=scores.device, dtype=torch.long).view(b)
    total = base * h
    flat = scores.reshape(b, h * m)
    if flat_order is None:
        flat_order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    taken = torch.arange(h * m, device=scores.device).view(1, -1) < total.view(b, 1)
    taken &= torch.isfinite(flat.gather(1, flat_order))
    topk = torch.zeros(b, h, dtype=torch.long, device=scores.device)
    topk.scatter_add_(1, flat_order // max(m, 1), taken.long())
    floor = head_floor_tokens(base, alpha)
    pool = total - h * floor  # tokens that follow the top-k counts
    # share_h = topk_h * pool / total, rounded by the largest remainder (ties to the lower head)
    num = topk * pool.view(b, 1)
    den = total.clamp_min(1).view(b, 1)
    share, rem = num // den, num % den
    missing = (pool - share.sum(dim=1)).view(b, 1)
    rank = torch.empty_like(rem)
    order = torch.sort(rem, dim=1, descending=True, stable=True).indices
    rank.scatter_(1, order, torch.arange(h, device=rem.device).expand(b, h).contiguous())
    counts = floor.view(b, 1) + share + (rank < missing).long()
    counts = torch.where(total.view(b, 1) > 0, counts, torch.zeros_like(counts))
    caps = torch.isfinite(scores).sum(dim=-1)
    if bool((counts > caps).any()):
        counts = _within_caps(counts, caps, topk)
    return counts


def _within_caps(counts: torch.Tensor, caps: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    """Cut heads to the tokens they have and give the excess to heads with room, most top-k hits first
    (ties to the lower head). Only scores where heads hold different numbers of candidates (a layer
    re-compressed after a head-adaptive keep) can need this; every count stays an exact integer."""
    out = counts.minimum(caps).cpu()
    room = (caps.cpu() - out).tolist()
    excess = (counts.cpu() - out).sum(dim=1).tolist()
    hits = topk.cpu().tolist()
    for r, extra in enumerate(excess):
        for head in sorted(range(out.shape[1]), key=lambda i: (-hits[r][i], i)):
            give = min(extra, room[r][head])
            out[r, head] += give
            extra -= give
    return out.to(counts.device)


@dataclass
class HeadBudgets:
    """Mixin for methods that can split each layer's budget across KV heads adaptively.

    Attributes:
        heads: ``"uniform"`` (every KV head keeps the layer budget) or ``"adaptive"`` (Ada-KV: one
            top-k over all of the layer's heads decides each head's count; the layer total is the same).
        head_floor: Ada-KV's safeguard ``alpha``: every head keeps at least ``floor(alpha * (b - w))``
            of the layer's ``b - w`` non-window tokens per head, 0.2.
    """

    heads: HeadMode = "uniform"
    head_floor: float = DEFAULT_FLOOR

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.heads not in ("uniform", "adaptive"):
            raise BudgetError(f"heads must be 'uniform' or 'adaptive', got {self.heads!r}")
        if not 0.0 <= self.head_floor <= 1.0:
            raise BudgetError(f"head_floor must be in [0, 1], got {self.head_floor}")

    @property
    def head_adaptive(self) -> bool:
        return self.heads == "adaptive"

    def head_alpha(self) -> float | None:
        """The safeguard fraction when heads are adaptive, ``None`` when they are uniform."""
        return self.head_floor if self.heads == "adaptive" else None


def shrink_candidates(
    cand: torch.Tensor,
    budget: int | torch.Tensor,
    window: int,
    alpha: float | None = None,
) -> tuple[torch.Tensor | Selection, torch.Tensor]:
    """Cut a layer that holds scored candidates followed by its window to ``budget`` candidates per KV
    head on average: the hook for allocators that shrink layers after the fact (DynamicKV's
    re-allocation), uniform per head or head-adaptive.

    Args:
        cand: ``[batch, kv_heads, c]`` scores of the candidates each (row, head) holds, in its cache
            order; ``-inf`` past a head's own count (heads that were already split adaptively).
        budget: the new non-window tokens per head on average, one int or ``[batch]``.
        window: window tokens each (row, head) holds right after its candidates.
        alpha: ``None`` (every head keeps ``budget``, at most what it holds) or the safeguard
            fraction of :func:`adaptive_head_counts` (the heads share ``kv_heads * budget``).

    Returns:
        ``(keep, cand)``: the keep operation for the layer (relative to its current tokens: a
        rectangular index or a :class:`~dynamickv.selection.Selection`), and the kept candidates'
        scores in their new order (``-inf`` padded) for the next shrink.
    """
    b, h, _ = cand.shape
    held = torch.isfinite(cand).sum(dim=-1)
    base = (
        budget.to(cand.device).view(b) if isinstance(budget, torch.Tensor) else torch.full((b,), int(budget))
    )
    base = base.to(device=cand.device, dtype=torch.long)
    if alpha is None:
        counts = base.view(b, 1).expand(b, h).minimum(held)
    else:
        counts = adaptive_head_counts(cand, base, alpha)
    keep = top_by_counts(cand, counts, held, window)
    index = keep.index if isinstance(keep, Selection) else keep
    cmax = int(counts.max()) if counts.numel() else 0
    slots = torch.arange(cmax, device=cand.device)
    kept = cand.gather(
        -1, index[..., :cmax].clamp_max(max(cand.shape[-1] - 1, 0))
    )  # window slots masked below
    return keep, torch.where(slots < counts.unsqueeze(-1), kept, torch.full_like(kept, float("-inf")))

"""Layer-budget arithmetic shared by the layer-adaptive methods (DynamicKV and its robust variant).

Kept apart from the methods so that each rule can be read, and tested, on its own: the rule the
DynamicKV authors released, the exact-sum rule this project uses otherwise, and the score
normalisation that makes layers comparable.
"""

from __future__ import annotations

import torch

from ..budget import capped_allocation


def authors_allocation(
    counts: torch.Tensor, n_layers: int, bs: int, total: int, final_target: int | None = None
) -> torch.Tensor:
    """The DynamicKV authors' ``update_and_reset_budget`` arithmetic, line by line.

    Args:
        counts: ``[n_layers]`` how many of the global top-k scores fell in each layer.
        n_layers: layers seen so far (``l + 1``): each count is floor-divided by it.
        bs: the per-layer candidate count (``min(r_max * base, n - w)``).
        total: the budget to hand out (``base * L``, the whole global budget, at every update).
        final_target: at the last update, the authors add ``target - sum(counts)`` to the newest
            layer's count (``target = base * heads``); ``None`` elsewhere.

    Returns ``[n_layers]`` budgets: ``floor(bs * share)`` rescaled to ``total`` with floors, the
    shortfall added to the newest layer (as the authors do). Shares use float32 as theirs do.
    Degenerate inputs the authors' code divides by zero on (no counts) get equal shares.
    """
    c = [int(x) // n_layers for x in counts.tolist()]
    if final_target is not None:
        c[-1] += final_target - sum(c)
    s = sum(c)
    if s <= 0:
        c, s = [1] * n_layers, n_layers
    fix = [int((bs * (torch.tensor(x, dtype=torch.float32) / float(s))).item()) for x in c]
    ratio = sum(fix) / total if total > 0 else 0.0
    fix = [int(k // ratio) for k in fix] if ratio > 0 else [total // n_layers] * n_layers
    fix[-1] += total - sum(fix)
    return torch.tensor([max(0, x) for x in fix], dtype=torch.long)


def candidate_allocation(shares: torch.Tensor, total: int, caps: torch.Tensor) -> torch.Tensor:
    """Integers proportional to ``shares`` summing to ``min(total, caps.sum())``, none above its cap
    (water-filling, then the largest-remainder rule; see :func:`dynamickv.budget.capped_allocation`)."""
    return capped_allocation(shares, total, caps)


def normalized_scores(scores: torch.Tensor, sink: int = 0) -> torch.Tensor:
    """Each (row, head)'s scores as a distribution over the tokens the allocation counts.

    Why: a token's raw score is its share of the observation window's attention, and how much of that
    attention a layer spends on the attention sink or on the window itself varies from layer to layer
    by an order of magnitude. Raw scores therefore rank a layer whose attention is merely *diffuse*
    (little sink mass, many middling tokens) above a layer that spends most of its mass on the sink
    and the rest sharply on a few tokens, which is how retrieval layers look. Dividing by the mass
    left after the sink makes every layer-head a probability distribution, so the global top-k
    prefers *concentrated* attention. The first ``sink`` tokens and padding (``-inf``) count as zero
    and are returned as ``-inf`` (never counted).
    """
    s = scores.clone()
    if sink:
        s[..., :sink] = float("-inf")
    finite = torch.isfinite(s)
    mass = torch.where(finite, s, torch.zeros_like(s)).sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.where(finite, s / mass, s)

"""Layer-budget arithmetic shared by the layer-adaptive methods (DynamicKV and its robust variant).

Kept apart from the methods so that each rule can be read, and tested, on its own: the rule the
DynamicKV authors released, the exact-sum rule this project uses otherwise, the score
normalisation that makes layers comparable, and CAKE's layer preference.
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


def layer_preference(attention: torch.Tensor, window: int, tau1: float = 1.0, tau2: float = 1.0) -> float:
    """CAKE's layer preference ``P = H^(1/tau1) * V^(1/tau2)`` from one layer's window attention.

    Qin et al., "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", ICLR 2025
    (arXiv 2503.12491). ``H`` is the *spatial dispersion*: the entropy ``-sum a log a`` of the last
    ``window`` queries' attention over the non-window tokens, summed over rows, heads and queries;
    ``V`` is the *temporal shift*: the variance of that attention over the ``window`` queries, summed
    over tokens and heads. Why both: a layer whose attention is spread out needs many tokens to keep
    its mass, and a layer whose attention moves from query to query needs them to keep what later
    queries (the decoded ones) will look at. Budgets are then proportional to ``P``.

    Args:
        attention: ``[b, h_kv, group, W, n]`` attention probabilities (:meth:`Observation.attention`).
        window: the observation window ``w`` (its last ``w`` queries are read; its keys are not).
    """
    a = attention[..., -window:, : attention.shape[-1] - window].float()
    dispersion = -(a * torch.log(a + 1e-10)).sum()
    shift = a.var(dim=-2).sum() if a.shape[-2] > 1 else a.new_zeros(())
    return float(dispersion.clamp_min(0) ** (1.0 / tau1) * shift.clamp_min(0) ** (1.0 / tau2))

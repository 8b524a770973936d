"""CAKE: layer budgets from each layer's attention preference, tokens ranked by mean + variance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import BudgetError
from ..scoring import Observation, Pooling
from .dynamickv import Allocation, DynamicKV, DynamicPooling


def indicator_scores(
    obs: Observation, window: int, gamma: float, kernel: int, pooling: Pooling, quiet_sinks: int = 0
) -> torch.Tensor:
    """CAKE's eviction indicator of the non-window tokens, ``[b, h_kv, n - window]``.

    For each query head, the mean of a token's attention over the last ``window`` queries plus
    ``gamma`` times its variance over them (unbiased, as ``torch.var``), pooled along positions
    (CAKE: average, kernel 5), then averaged over the query heads of each KV head. Why the variance:
    a token that only some of the window's queries look at is one that later queries (the decoded
    ones) may look at too, so a mean alone undervalues it. Padded positions are ``-inf``.
    """
    a = obs.attention()[..., -window:, : obs.n - window]  # [b, h_kv, group, w, m]
    spread = a.var(dim=-2) if a.shape[-2] > 1 else torch.zeros_like(a[..., 0, :])
    # the authors pool each query head, then average; with their average pooling the order does not
    # matter, and for the other poolings the heads are averaged first, as every method here does
    s = (a.mean(dim=-2) + gamma * spread).mean(dim=2)
    return obs.pooled(s, kernel=kernel, pooling=pooling, quiet_sinks=quiet_sinks)


@dataclass
class CAKE(DynamicKV):
    """CAKE, as its authors released it: layer budgets in proportion to each layer's *preference*,
    cascaded layer by layer, tokens ranked by attention mean plus variance.

    Paper: Qin et al., "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences",
    ICLR 2025 (arXiv 2503.12491). Authors' code: github.com/antgroup/cakekv (``cake/model``,
    ``cake/cake_cache.py``).

    * **Shares.** Layer ``l``'s preference is ``P_l = H_l^(1/tau1) * V_l^(1/tau2)``: ``H`` the
      entropy of the window's attention over the non-window tokens (how spread it is), ``V`` its
      variance over the window's queries (how much it moves). Each layer keeps
      ``P_l / sum P * L * (B - w)`` non-window tokens plus its window
      (:func:`~dynamickv.methods.allocation.layer_preference`).
    * **Cascade.** After every layer (``update_every=1``) the layers seen so far share the whole
      budget ``L * (B - w)`` by their preferences and are cut to their shares. A share only shrinks
      as layers join, so each layer is cut along its own ranking and never grows back. Memory in the
      prefill is bounded by the budget plus one layer's prompt; the final budgets are those of
      CAKE's one-shot allocation.
    * **Ranking.** :func:`indicator_scores`: mean + ``gamma`` x variance of each token's attention
      over the window's queries, average-pooled (kernel 5), averaged over the query heads of a KV
      head (GQA-native, as the authors' ``hh_score``).

    Defaults are the authors' LongBench script's: window 32, ``gamma = 200``, kernel 5, and
    ``tau1 = tau2 = 1`` (the value their script falls back to for models absent from its
    per-model table).

    Deviations, and why:

    * Shares are rounded with the largest-remainder rule under each layer's cap
      (:func:`~dynamickv.budget.capped_allocation`). The authors floor them and hand out the
      remainder one token at a time from layer 0, so a layer's budget can differ by one token.
    * The attention is float32 throughout. The authors cast the softmax back to the model's dtype
      (bf16) before the entropy and the variance.
    * Selection is per KV head on the group's averaged scores, as theirs, but K/V are not repeated
      per query head.

    Attributes: as :class:`~dynamickv.methods.dynamickv.DynamicKV`, with CAKE's defaults
    (``window=32``, ``kernel=5``, ``pooling="avg"``, ``allocation="preference"``,
    ``update_every=1``), plus:

        gamma: the variance's weight in the ranking, 200.

    ``allocation``, ``r_max``, ``normalize`` and ``sink`` are DynamicKV's and not settable here.
    """

    name = "cake"
    #: CAKE's budgets are its preference shares alone: no candidate cap, counting or normalisation
    unused: ClassVar[frozenset[str]] = frozenset({"allocation", "r_max", "normalize", "sink"})
    capped = False  # CAKE caps nothing before the shares are known
    summary = "layer budgets from attention preference (entropy x variance), cascaded; mean+var ranking"
    paper = "Qin et al. 2025, CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences (arXiv 2503.12491)"

    window: int = 32
    kernel: int = 5
    pooling: DynamicPooling = "avg"
    allocation: Allocation = "preference"
    update_every: int = 1
    gamma: float = 200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling == "auto":
            raise BudgetError(f"{self.name}: pooling='auto' is DynamicKV's per-family choice, not CAKE's")
        if self.gamma < 0:
            raise BudgetError(f"{self.name}: gamma must be >= 0, got {self.gamma}")

    def score(self, obs: Observation) -> torch.Tensor:
        return indicator_scores(obs, self.window, self.gamma, self.kernel, self._pooling, self.quiet_sinks)

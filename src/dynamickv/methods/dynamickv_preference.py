"""DynamicKV's cascade with CAKE's layer shares and the recommended scoring: the best layer-adaptive variant."""

from __future__ import annotations

from dataclasses import dataclass

from .dynamickv import Allocation, DynamicKV, DynamicPooling


@dataclass
class PreferenceDynamicKV(DynamicKV):
    """Layer-adaptive budgets in proportion to each layer's attention *preference*, with a token floor.

    Not a paper's method: this library's combination of three measured parts.

    * The shares are CAKE's layer preference, ``P = H * V``: the entropy of the window's attention
      (how spread it is) times its variance over the window's queries (how much it moves). Qin et
      al., "CAKE: Cascading and Adaptive KV Cache Eviction with Layer Preferences", ICLR 2025
      (arXiv 2503.12491). CAKE tunes two temperatures per model and budget; here both are 1.
    * The cascade is DynamicKV's (Zhou et al. 2025, arXiv 2412.14838): every ``m = 4`` layers the
      layers seen so far share the whole budget and shrink, never growing back, so the prefill
      never holds more than ``r_max`` times the budget.
    * The scoring is ``snapkv-decay``'s: ``decay`` pooling (half-life 12), quiet sinks, window 8.

    Why not DynamicKV's own shares: its global top-k over raw scores hands most of the budget to the
    layers whose attention is the most diffuse (on SmolLM2 at B = 256 layers 3-8 hold 800-900
    tokens and most others 27), and starves the layers that copy the answer. CAKE's shares are
    smoother (12-125 non-window tokens at B = 64 on the same prompt) and follow a different signal.

    Why ``min_tokens=32``: without a floor, CAKE's shares left some SmolLM2 layers 12 tokens at B = 64
    and lost 4.3 points there; a floor counted in tokens binds only at small budgets.

    Measured (``docs/evaluation.md``, the fourth and fifth allocation screens, papers' protocol)
    against uniform ``snapkv-decay``: ahead on Qwen2.5-Coder-0.5B on both sets at every budget (+6.6
    and +8.9 at B = 64, 95% intervals above 0), level on SmolLM2-135M (-1.6 to +0.8, every interval
    across 0), and on Qwen2.5-Coder-1.5B, a model no choice had seen, ahead on all three sets
    (+3.0 to +9.5). So the recommended ``dynamickv-auto`` runs it on Qwen2 and ``snapkv-decay``
    elsewhere.

    Attributes: as :class:`DynamicKV`; defaults ``pooling="decay"``, ``kernel=12``,
    ``quiet_sinks=4``, ``allocation="preference"``, ``min_tokens=32``.
    """

    name = "dynamickv-preference"
    summary = (
        "DynamicKV's cascade with CAKE's layer shares (entropy x variance), decay pooling, 32-token floor"
    )
    paper = "this library's variant: CAKE's shares (arXiv 2503.12491) in DynamicKV (arXiv 2412.14838)"

    pooling: DynamicPooling = "decay"
    kernel: int = 12
    quiet_sinks: int = 4
    allocation: Allocation = "preference"
    min_tokens: int = 32

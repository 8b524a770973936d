"""SnapKV with forward pooling and a short window: uniform budgets, the answer's continuation kept."""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import Pooling
from .snapkv import SnapKV


@dataclass
class ForwardSnapKV(SnapKV):
    """SnapKV's uniform per-layer budgets with forward pooling (k=12) and an 8-token window.

    Not a paper's method: this library's variant of SnapKV (Li et al. 2024, arXiv 2404.14469), the
    recommended method after the allocation screen of 2026-11-29 until ``snapkv-decay``
    (:class:`~dynamickv.methods.snapkv_decay.DecaySnapKV`) replaced it the same day
    (``docs/evaluation.md``); kept because the allocation screen's tables measured it.

    Why forward pooling (``docs/diagnosis.md``): the question's attention falls on the *start* of what
    the model will copy (the first digits of a 7-digit needle). Centred pooling keeps that start and
    loses the rest; forward pooling lends each token's score to the 11 tokens after it, so a kept token
    brings its continuation. The window is 8, not SnapKV's 32, so that more of a small budget goes to
    the context.

    Why uniform budgets: on both real models we can run (SmolLM2-135M, Qwen2.5-Coder-0.5B; RULER,
    the papers' protocol) no layer-adaptive allocation we built or measured (DynamicKV's, with floors
    of 0.5 and 0.75 of the base budget, the candidates rule, head-adaptive budgets) scores above these
    uniform budgets at B = 64, 128 or 256, sample by sample over seven sets; DynamicKV's allocation
    with the same scoring loses at B = 64 and on the aggregation tasks. Uniform budgets also cost the
    least at prefill (one top-k per layer, no re-allocation).

    Attributes: as :class:`SnapKV`; defaults ``window=8``, ``kernel=12``, ``pooling="forward"``.
    """

    name = "snapkv-forward"
    summary = "SnapKV with forward pooling (k=12), w=8, uniform budgets: keeps the answer's continuation"
    paper = "this library's variant of SnapKV (arXiv 2404.14469); see docs/evaluation.md"

    window: int = 8
    kernel: int = 12
    pooling: Pooling = "forward"

"""SnapKV with a fading forward loan: uniform budgets, long answers kept whole, sinks lending nothing."""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import Pooling
from .snapkv import SnapKV


@dataclass
class DecaySnapKV(SnapKV):
    """SnapKV's uniform per-layer budgets with ``decay`` pooling (half-life 12), an 8-token window
    and quiet sinks (the first 4 tokens lend nothing).

    Not a paper's method: this library's variant of SnapKV (Li et al. 2024, arXiv 2404.14469), the
    recommended method from the third allocation screen of 2026-11-29 until 2026-11-30, and since
    then what the recommended ``dynamickv-auto`` runs on every family but Qwen2
    (``docs/evaluation.md``).

    Why ``decay`` pooling: a kept token must bring what the model will copy after it. ``forward``
    pooling (:class:`~dynamickv.methods.snapkv_forward.ForwardSnapKV`) lends a token's score to exactly
    the 11 tokens after it, so a 30-token uuid loses its end; ``decay`` lends
    ``s[t - d] * 2**(-d / 12)``, so the strongest peaks keep long spans when the budget allows
    (:func:`dynamickv.scoring.pool_scores`).

    Why quiet sinks: the first token scores about 10^5 times the median token, and without them its
    loan fills a 64-token budget with the 47 tokens after it (measured: the second screen collapsed
    at B = 64).

    Measured against ``snapkv-forward`` on five RULER sets of both real models (papers' protocol):
    level at B = 64, ahead at 128 and 256 on Qwen2.5-Coder (+5.9 and +9.5 on the confirmation set);
    it finds the uuid needles and loses some multi-needle and common-word samples.

    Attributes: as :class:`SnapKV`; defaults ``window=8``, ``kernel=12``, ``pooling="decay"``,
    ``quiet_sinks=4``.
    """

    name = "snapkv-decay"
    summary = "SnapKV with decay pooling (half-life 12), quiet sinks, w=8, uniform budgets: long spans kept"
    paper = "this library's variant of SnapKV (arXiv 2404.14469); see docs/evaluation.md"

    window: int = 8
    kernel: int = 12
    pooling: Pooling = "decay"
    quiet_sinks: int = 4

"""Layer-adaptive budgets on the model families where they were measured ahead, uniform elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BudgetError
from ..scoring import Observation
from .base import SUPPORTED_MODEL_TYPES, KeepOp, Method, PrefillInfo
from .dynamickv_preference import PreferenceDynamicKV
from .snapkv_decay import DecaySnapKV

#: ``config.model_type`` values on which ``dynamickv-preference`` was measured ahead of uniform
#: ``snapkv-decay`` (docs/evaluation.md, papers' protocol, RULER): Qwen2.5-Coder-0.5B on four sets
#: (12 of 12 cells ahead) and Qwen2.5-Coder-1.5B, a model no choice had seen, on three (9 of 9).
#: Not listed: ``llama`` (SmolLM2-135M, five sets: level, 11 of 15 cells slightly behind) and every
#: family not measured.
ADAPTIVE_FAMILIES = ("qwen2",)


@dataclass
class AutoDynamicKV(Method):
    """``dynamickv-preference`` on the families where layer-adaptive budgets were measured ahead of
    uniform ones, ``snapkv-decay`` on every other family.

    Not a paper's method: this library's per-family choice between its two best methods, as the
    DynamicKV authors chose their pooling per family (``dynamickv:pooling=auto``). Both branches
    score tokens alike (decay pooling, half-life ``kernel``, ``quiet_sinks`` silent sinks, an
    8-token window); they differ in how the budget is shared between layers:

    * listed families (:data:`ADAPTIVE_FAMILIES`, ``qwen2``): CAKE's layer preference (entropy x
      variance of the window's attention) in DynamicKV's cascade, with a ``min_tokens`` floor per
      layer (:class:`~.dynamickv_preference.PreferenceDynamicKV`);
    * every other family: the same budget in every layer (:class:`~.snapkv_decay.DecaySnapKV`).

    Each branch keeps exactly the tokens its method keeps (``tests/test_dynamickv_auto.py``), so the
    measurements of the two methods are this one's. Which branch ran is reported as
    ``stats.extra["allocation"]`` (``"preference"`` or ``"uniform"``), and
    ``families=all`` / ``families=none`` force one.

    Why per family and not per prompt: on Qwen2.5-Coder (0.5B and 1.5B) the preference shares were
    ahead at every budget on every set (21 of 21 cells, up to +9.5 points at B = 64), while on
    SmolLM2-135M (Llama) they were level with uniform budgets and more often slightly behind; no
    statistic of one prompt measured so far predicts which. The ``llama`` entry rests on one 135M
    model: a family is added when it is measured ahead, and until then gets the uniform budgets
    that were never behind.

    Attributes:
        window: observation window, 8 (both branches).
        kernel: decay half-life in tokens, 12 (both branches).
        quiet_sinks: leading tokens that lend no score, 4 (both branches).
        min_tokens: the preference branch's per-layer floor in non-window tokens, 32.
        families: the ``config.model_type`` values that get layer-adaptive budgets, joined by ``+``
            (``"qwen2+llama"``; a comma would split an ``eval --methods`` list); ``"default"``
            (:data:`ADAPTIVE_FAMILIES`), ``"all"`` or ``"none"``.
    """

    name = "dynamickv-auto"
    summary = (
        "layer-adaptive budgets (dynamickv-preference) on families measured ahead (qwen2), "
        "uniform snapkv-decay elsewhere"
    )
    paper = "this library's per-family choice between dynamickv-preference and snapkv-decay; see docs/evaluation.md"

    window: int = 8
    kernel: int = 12
    quiet_sinks: int = 4
    min_tokens: int = 32
    families: str = "default"

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [f.strip().lower() for f in self.families.split("+") if f.strip()]
        if not names:
            raise BudgetError(f"{self.name}: families must name model types, 'default', 'all' or 'none'")
        if len(names) > 1 and {"default", "all", "none"} & set(names):
            raise BudgetError(
                f"{self.name}: families: 'default', 'all' and 'none' stand alone, got {self.families!r}"
            )
        unknown = [n for n in names if n not in (*SUPPORTED_MODEL_TYPES, "default", "all", "none")]
        if unknown:  # a misspelt family would silently get uniform budgets
            raise BudgetError(
                f"{self.name}: families: unknown model type {unknown[0]!r}; "
                f"choose from {', '.join(SUPPORTED_MODEL_TYPES)}, or default, all, none (joined by +)"
            )
        self._families = ADAPTIVE_FAMILIES if names == ["default"] else tuple(names)
        shared = {"window": self.window, "kernel": self.kernel, "quiet_sinks": self.quiet_sinks}
        self._adaptive = PreferenceDynamicKV(**shared, min_tokens=self.min_tokens)
        self._uniform = DecaySnapKV(**shared)
        self._chosen: Method = self._uniform
        self.chosen_allocation: str | None = None

    def adaptive_for(self, model_type: str) -> bool:
        """Whether a model of this ``config.model_type`` gets layer-adaptive budgets."""
        if self._families == ("all",):
            return True
        return self._families != ("none",) and model_type.lower() in self._families

    @property
    def observation_queries(self) -> int:
        return max(self._adaptive.observation_queries, self._uniform.observation_queries)

    def validate(self, budget: int, num_layers: int) -> None:
        for branch in (self._adaptive, self._uniform):
            try:
                branch.validate(budget, num_layers)
            except BudgetError as exc:  # name the method the user chose, then the branch that refused
                why = str(exc).removeprefix(f"{branch.name}: ")
                raise BudgetError(f"{self.name} (its {branch.name} branch): {why}") from None

    def begin(self, info: PrefillInfo) -> None:
        self._info = info
        adaptive = self.adaptive_for(info.model_type)
        self._chosen = self._adaptive if adaptive else self._uniform
        self.chosen_allocation = "preference" if adaptive else "uniform"
        self._chosen.begin(info)

    def score(self, obs: Observation) -> torch.Tensor:
        return self._chosen.score(obs)

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        self._require_info()
        return self._chosen.compress(layer, obs)

    def budgets(self) -> list[int]:
        return self._chosen.budgets()

    def extra_stats(self) -> dict[str, str]:
        return {"allocation": self.chosen_allocation} if self.chosen_allocation else {}

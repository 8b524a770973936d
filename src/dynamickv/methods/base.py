"""The base class every compression method derives from.

A method sees the compressed layers one at a time, in order, during prefill (an
:class:`~dynamickv.scoring.Observation` per layer) and answers with *keep operations*: which tokens
of which layer's current cache to keep. Most methods only ever touch the layer in hand; DynamicKV
also shrinks earlier layers as its global budget is re-allocated, which is why the answer is a list
of ``(layer, index)`` operations rather than one index.

Subclasses override one scoring hook, :meth:`Method.score`, and, where their budget shape is not
uniform, :meth:`Method.layer_budgets`. Methods whose selection is not "top tokens per head plus the
window" (DynamicKV, WindowKV, StreamingLLM) override :meth:`Method.compress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from ..errors import BudgetError
from ..scoring import Observation, stable_topk

#: ``(layer ordinal, index)``: keep the tokens at ``index`` (``[batch, kv_heads, k]``, sorted,
#: relative to the layer's current cache) of that layer. ``None`` keeps the whole layer.
KeepOp = tuple[int, "torch.Tensor | None"]


@dataclass
class PrefillInfo:
    """What a method knows about the prompt before the first layer.

    ``n`` is the padded length (keys per layer); ``n_eff`` the shortest real prompt of the batch,
    which bounds the shared per-layer counts so that padding is never kept.
    """

    n: int
    n_eff: int
    num_layers: int
    budget: int
    valid: torch.Tensor | None = None

    @property
    def padded(self) -> bool:
        return self.valid is not None and bool((~self.valid).any())


@dataclass
class Method:
    """Base class: keep the top-scoring tokens of each layer plus the observation window.

    Attributes:
        window: observation window ``w``: the last ``w`` prompt tokens are always kept and their
            queries score the rest. Counted inside the budget.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    #: Fields inherited from this base that the method does not read (not settable in a spec).
    unused: ClassVar[frozenset[str]] = frozenset()

    window: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and v < 0:
                raise BudgetError(f"{self.name}: {f.name} must be >= 0, got {v}")
            if isinstance(v, float) and not math.isfinite(v):  # NaN passes every comparison
                raise BudgetError(f"{self.name}: {f.name} must be a finite number, got {v}")
        self._info: PrefillInfo | None = None
        self._budgets: list[int] = []

    # -- configuration ------------------------------------------------------------------------
    @property
    def observation_queries(self) -> int:
        """How many trailing prompt queries the method reads (0: it needs no attention)."""
        return self.window

    def validate(self, budget: int, num_layers: int) -> None:
        """Reject parameters that cannot work with this budget (raise :class:`BudgetError`)."""
        if budget <= 0:
            raise BudgetError(f"budget must be > 0, got {budget}")
        if self.window >= budget:
            raise BudgetError(
                f"{self.name}: the observation window ({self.window}) must be smaller than the budget "
                f"({budget}), since the budget counts the window"
            )

    def layer_budgets(self, info: PrefillInfo) -> list[int]:
        """Tokens kept per layer (window included). Uniform ``B`` by default."""
        return [info.budget] * info.num_layers

    # -- the scoring hook ---------------------------------------------------------------------
    def score(self, obs: Observation) -> torch.Tensor:
        """Importance of the non-window tokens, ``[batch, kv_heads, n - window]``; -inf never kept."""
        return obs.scores(self.window)

    # -- the prefill protocol -----------------------------------------------------------------
    def begin(self, info: PrefillInfo) -> None:
        """Called once per prefill, before the first layer."""
        self._info = info
        self._budgets = self.layer_budgets(info)

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        """Keep operations after ``layer``'s prefill attention.

        ``obs`` computes attention lazily: a method that does not call ``obs.scores`` for a layer
        (StreamingLLM, WindowKV inside a group) costs no scoring work there.
        """
        info = self._require_info()
        return [(layer, select_top(self.score, obs, self._budgets[layer], self.window, info))]

    def budgets(self) -> list[int]:
        """The per-layer budgets of the current prefill (after :meth:`begin`)."""
        return list(self._budgets)

    def _require_info(self) -> PrefillInfo:
        if self._info is None:
            raise RuntimeError(f"{self.name}: begin() must be called before compress()")
        return self._info

    def describe(self) -> str:
        params = ", ".join(
            f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name not in self.unused
        )
        return f"{self.name}({params})"


def keep_all_needed(info: PrefillInfo, layer_budget: int) -> bool:
    """True when the layer keeps its whole prompt: no padding and the prompt fits the budget."""
    return not info.padded and info.n <= layer_budget


def window_index(info: PrefillInfo, batch: int, heads: int, window: int, device) -> torch.Tensor:
    return torch.arange(info.n - window, info.n, device=device).expand(batch, heads, window)


def select_top(score_fn, obs: Observation, layer_budget: int, window: int, info: PrefillInfo):
    """The standard selection: window plus the top ``k - window`` tokens per KV head.

    ``k = min(layer_budget, n_eff)``; returns ``None`` (keep all) when nothing must be dropped.
    """
    if keep_all_needed(info, layer_budget):
        return None
    k = min(layer_budget, info.n_eff)
    b, h = obs.batch, obs.num_kv_heads
    w = min(window, k)
    win = window_index(info, b, h, w, obs.keys.device)
    if k == w:
        return win
    top = stable_topk(score_fn(obs), k - w)[1]
    return torch.cat([top.sort(dim=-1).values, win], dim=-1)

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
from ..heads import adaptive_head_counts
from ..scoring import Observation, stable_topk
from ..selection import KeepIndex, top_by_counts

#: ``(layer ordinal, index)``: keep the tokens at ``index`` (``[batch, kv_heads, k]``, sorted,
#: relative to the layer's current cache) of that layer, or a
#: :class:`~dynamickv.selection.Selection` when counts differ per (row, KV head). ``None`` keeps the
#: whole layer.
KeepOp = tuple[int, KeepIndex]

#: Model families this library is tested on (``config.model_type``; ``PrefillInfo.model_type`` is one).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3")


@dataclass
class PrefillInfo:
    """What a method knows about the prompt before the first layer.

    ``n`` is the padded length (keys per layer); ``n_eff`` the shortest real prompt of the batch.
    In a left-padded batch (``valid`` not ``None``) every row is compressed as it would be alone:
    row ``r`` has ``lengths[r]`` real tokens and its own budget ``row_budgets[r]`` (a ratio budget
    differs per row; a token budget is the same), and :meth:`alone` is the prefill that row would
    be by itself. Methods whose allocation is shared by the batch (DynamicKV's) use ``n_eff``.
    """

    n: int
    n_eff: int
    num_layers: int
    budget: int
    valid: torch.Tensor | None = None
    lengths: list[int] | None = None
    row_budgets: list[int] | None = None
    #: ``config.model_type`` of the model (``""`` when unknown): for family-dependent defaults
    model_type: str = ""

    def __post_init__(self) -> None:
        if self.lengths is None and self.valid is not None:
            self.lengths = [int(v) for v in self.valid.sum(dim=1).tolist()]

    @property
    def padded(self) -> bool:
        return self.valid is not None and bool((~self.valid).any())

    @property
    def rows(self) -> int:
        """Batch rows (1 when unknown: an unpadded prefill treats every row alike)."""
        return len(self.lengths) if self.lengths is not None else 1

    def length(self, row: int) -> int:
        return self.lengths[row] if self.lengths is not None else self.n

    def budget_of(self, row: int) -> int:
        return self.row_budgets[row] if self.row_budgets is not None else self.budget

    def alone(self, row: int) -> PrefillInfo:
        """The prefill of row ``row`` by itself: its own length and budget, no padding."""
        n = self.length(row)
        return PrefillInfo(
            n=n, n_eff=n, num_layers=self.num_layers, budget=self.budget_of(row), model_type=self.model_type
        )


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
        if type(self).observation_queries is Method.observation_queries and self.window < 1:
            raise BudgetError(f"{self.name}: window must be at least 1: its queries score the other tokens")
        self._info: PrefillInfo | None = None
        self._budgets: list[int] = []
        self._row_budgets: list[list[int]] | None = None

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

    def head_alpha(self) -> float | None:
        """Ada-KV's safeguard fraction when KV heads share each layer's budget adaptively, else
        ``None`` (every head keeps the layer budget). See :class:`dynamickv.heads.HeadBudgets`."""
        return None

    # -- the scoring hook ---------------------------------------------------------------------
    def score(self, obs: Observation) -> torch.Tensor:
        """Importance of the non-window tokens, ``[batch, kv_heads, n - window]``; -inf never kept."""
        return obs.scores(self.window)

    # -- the prefill protocol -----------------------------------------------------------------
    def begin(self, info: PrefillInfo) -> None:
        """Called once per prefill, before the first layer."""
        self._info = info
        self.plan_budgets(info)

    def plan_budgets(self, info: PrefillInfo) -> None:
        """Per-layer budgets; in a padded batch, each row's own (as if it were alone).

        :meth:`budgets` then reports the longest row's (for one prompt: its only row's).
        """
        self._budgets = self.layer_budgets(info)
        self._row_budgets = None
        if info.padded:
            self._row_budgets = [self.layer_budgets(info.alone(r)) for r in range(info.rows)]
            longest = max(range(info.rows), key=info.length)
            self._budgets = list(self._row_budgets[longest])

    def layer_budget(self, layer: int) -> int | list[int]:
        """``layer``'s budget: one int, or one per row in a padded batch."""
        if self._row_budgets is None:
            return self._budgets[layer]
        return [row[layer] for row in self._row_budgets]

    def row_budgets(self) -> list[list[int]]:
        """Per row, the per-layer budgets of the current prefill (one row unless padded)."""
        if self._row_budgets is None:
            return [self.budgets()]
        return [list(row) for row in self._row_budgets]

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        """Keep operations after ``layer``'s prefill attention.

        ``obs`` computes attention lazily: a method that does not call ``obs.scores`` for a layer
        (StreamingLLM, WindowKV inside a group) costs no scoring work there.
        """
        info = self._require_info()
        budget = self.layer_budget(layer)
        return [(layer, select_top(self.score, obs, budget, self.window, info, self.head_alpha()))]

    def budgets(self) -> list[int]:
        """The per-layer budgets of the current prefill (after :meth:`begin`)."""
        return list(self._budgets)

    def _require_info(self) -> PrefillInfo:
        if self._info is None:
            raise RuntimeError(f"{self.name}: begin() must be called before compress()")
        return self._info

    def extra_stats(self) -> dict[str, str]:
        """What this prefill decided beyond the kept tokens, for ``PrefillStats.extra`` (after the
        prefill): WindowKV's chosen mode, ``dynamickv-auto``'s branch. Nothing by default."""
        return {}

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


def row_counts(
    info: PrefillInfo, layer_budget: int | list[int], window: int, batch: int
) -> tuple[list[int], list[int]]:
    """Per row of a ``batch``: ``(k, w)``, tokens kept per KV head (``min(budget, length)``) and
    window tokens among them (``min(window, k)``)."""
    if info.lengths is None:  # no padding: every row is the same length
        budget = layer_budget if isinstance(layer_budget, int) else layer_budget[0]
        k = [min(budget, info.n)] * batch
    else:
        budgets = layer_budget if isinstance(layer_budget, list) else [layer_budget] * batch
        k = [min(budgets[r], info.length(r)) for r in range(batch)]
    return k, [min(window, kr) for kr in k]


def select_top(
    score_fn,
    obs: Observation,
    layer_budget: int | list[int],
    window: int,
    info: PrefillInfo,
    head_alpha: float | None = None,
) -> KeepIndex:
    """The standard selection: the window plus the top-scoring tokens of each KV head.

    Each row keeps ``k = min(its layer budget, its length)`` tokens per KV head on average (one
    budget, or one per row in a padded batch), the last ``w = min(window, k)`` of them the window.
    With ``head_alpha`` (head-adaptive), the ``H * (k - w)`` non-window tokens of a row are split
    across its KV heads by :func:`~dynamickv.heads.adaptive_head_counts`; otherwise every head keeps
    ``k - w``. Returns ``None`` (keep all) when nothing must be dropped, a rectangular index when
    every (row, head) keeps the same count, else a :class:`~dynamickv.selection.Selection`.
    """
    b, h, n = obs.batch, obs.num_kv_heads, info.n
    if not info.padded:
        k = layer_budget if isinstance(layer_budget, int) else layer_budget[0]
        if n <= k:
            return None
        w = min(window, k)
        if head_alpha is None:
            win = window_index(info, b, h, w, obs.keys.device)
            if k == w:
                return win
            top = stable_topk(score_fn(obs), k - w)[1]
            return torch.cat([top.sort(dim=-1).values, win], dim=-1)
        ks, ws = [k] * b, [w] * b
    else:
        ks, ws = row_counts(info, layer_budget, window, b)
    device = obs.keys.device
    base = torch.tensor([k - w for k, w in zip(ks, ws, strict=True)], dtype=torch.long, device=device)
    wins = torch.tensor(ws, dtype=torch.long, device=device)
    scores = score_fn(obs)
    if head_alpha is None:
        counts = base.view(b, 1).expand(b, h)
    else:
        counts = adaptive_head_counts(scores, base, head_alpha)
    return top_by_counts(scores, counts, n - wins, wins)

"""DynamicKV: per-layer budgets decided from the model's own attention, progressively during prefill."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..errors import BudgetError
from ..heads import HeadBudgets, shrink_candidates
from ..scoring import POOLINGS, Observation, stable_topk
from ..selection import Selection
from .allocation import authors_allocation, candidate_allocation, layer_preference, normalized_scores
from .base import KeepOp, Method, PrefillInfo, select_top

Allocation = Literal["authors", "candidates", "preference"]
#: DynamicKV's pooling: the shared ones, or ``"auto"``, the authors' per family (:data:`FAMILY_POOLING`)
DynamicPooling = Literal["avg", "max", "forward", "decay", "none", "auto"]
Normalize = Literal["none", "sum"]
Rows = Literal["shared", "separate"]


#: The authors' per-family pooling (their run scripts): max pooling for Mistral and Qwen2, average
#: pooling for Llama-3 and InternLM; families they did not run get their default, average.
FAMILY_POOLING = {"mistral": "max", "qwen2": "max"}


def family_pooling(model_type: str) -> str:
    """``pooling="auto"``: the pooling the DynamicKV authors used for this model family."""
    return FAMILY_POOLING.get(model_type, "avg")


@dataclass
class DynamicKV(HeadBudgets, Method):
    """Task-adaptive, layer-adaptive budgets (the paper's algorithm, as its authors released it).

    Paper: Zhou et al., "DynamicKV: Task-Aware Adaptive KV Cache Compression for Long Context
    LLMs", EMNLP 2025 Findings (arXiv 2412.14838). Authors' code: github.com/DreamMr/DynamicKV.

    With ``L`` layers, ``base = B - w`` and the global budget ``G = base * L``, each layer keeps as
    candidates its top ``bs = min(r_max * base, n - w)`` pooled-score tokens per KV head (plus the
    window). Every ``m`` layers, and after the last one, the global top ``base * (l + 1) * H_kv``
    scores over layers ``0..l`` decide each layer's share of ``G``; every layer ``j <= l`` is then cut
    to its top ``b_j`` candidates (a layer never grows back). After the last layer the average layer
    holds ``B`` tokens (fewer only when the layers together hold less than ``G``).

    ``allocation`` picks how the shares are formed:

    * ``"authors"`` (default, what produced the published numbers): the top-k runs over *all*
      pooled scores of layers ``0..l``; each layer's count is floor-divided by ``l + 1``, budgets are
      ``floor(bs * share)`` rescaled to ``G`` with floors, and the rounding shortfall goes to the
      newest layer.
    * ``"candidates"``: the top-k runs over the candidates each layer still holds; float shares are
      scaled to ``G`` with water-filling under the held counts and rounded with the largest-remainder
      rule (exact sums, no bias towards the newest layer).
    * ``"preference"`` (not DynamicKV's rule): the shares are CAKE's layer preferences, entropy times
      variance of each layer's window attention (:func:`~dynamickv.methods.allocation.layer_preference`,
      exponents ``1/tau1`` and ``1/tau2``), handed out as in ``"candidates"``. Only the budget rule is
      CAKE's (Qin et al., ICLR 2025, arXiv 2503.12491); selection is still this method's pooled
      top-k, and the cascade is DynamicKV's (every ``m`` layers, a layer never grows back).
      ``normalize`` and ``sink`` do not apply to it.

    Fixes to the authors' code, in both modes: window tokens are never duplicated (a share above
    what a layer holds is capped there and the excess goes to the other layers in proportion to their
    shares, so the budget adds up), re-allocation also runs after the last layer when ``L`` is
    not a multiple of ``m`` (without it the last layers keep ``bs`` and the cache exceeds ``B``),
    prompts shorter than the window keep everything, ``m`` is a parameter, K/V are not repeated per
    query head (selection is per KV head, scores averaged over its query heads).

    Robust-allocation options (off by default; measured in ``docs/evaluation.md``):

    * ``min_ratio``: every layer keeps at least ``min_ratio * base`` tokens; the rest of ``G`` is
      shared as above. The authors' code defines ``radio_min = 0.1`` but never applies it.
    * ``min_tokens``: the same floor counted in tokens (the larger of the two applies, at most
      ``base``). Why: a floor in shares of ``B`` shrinks with ``B``, and at small budgets a layer near
      the floor holds too few pooled spans to keep an answer (``docs/evaluation.md``, the B = 64
      comparison); a floor in tokens binds only there.
    * ``normalize="sum"``: the allocation counts each (layer, head)'s scores divided by their sum over
      the counted tokens, so a layer whose attention goes mostly to the sink or the window no longer
      loses budget to layers whose attention is merely diffuse.
    * ``sink``: the first ``sink`` tokens are left out of the allocation's counting (they stay
      selectable within each layer).

    Attributes:
        window: observation window ``w`` (always kept), 8.
        kernel: pooling kernel ``k``, 7.
        pooling: ``"avg"`` (the authors' Llama scripts; their Mistral/Qwen2 scripts use ``"max"``;
            ``"auto"`` picks theirs per family, see :data:`FAMILY_POOLING`; ``"forward"``: see
            :func:`dynamickv.scoring.pool_scores`).
        quiet_sinks: the first that many tokens keep their own score but lend none when pooling, 0
            (as :class:`~dynamickv.methods.snapkv.SnapKV`; ``sink`` is the allocation's, not pooling's).
        r_max: a layer holds at most ``r_max * (B - w)`` non-window tokens, 10.
        update_every: re-allocation interval ``m`` in layers, 4.
        allocation: ``"authors"``, ``"candidates"`` or ``"preference"`` (see above).
        tau1, tau2: ``allocation="preference"``'s temperatures for dispersion and shift, 1 and 1
            (CAKE tunes them per model and budget; 1 and 1, untuned, are what the screens measured).
        min_ratio: per-layer floor as a fraction of ``B - w``, 0.
        min_tokens: per-layer floor in non-window tokens, 0.
        normalize: ``"none"`` or ``"sum"`` (see above).
        sink: leading tokens left out of the allocation's counting, 0.
        rows: in a left-padded batch, ``"shared"`` (the default, the authors' behaviour): one
            allocation for the whole batch, from every row's scores, bounded by the shortest row;
            ``"separate"``: every row is allocated as it would be alone (its own length, budgets and
            re-allocations), so each row answers exactly as it does alone and layers hold different
            counts per row (stored packed, see :mod:`dynamickv.ragged`).
        heads: ``"uniform"`` or ``"adaptive"``: within each layer's budget the KV heads share
            ``H * b_l`` tokens by one top-k over all of them (Ada-KV; layer + head adaptive), with
            ``head_floor`` (0.2) of the per-head budget as every head's floor. See
            :class:`dynamickv.heads.HeadBudgets`.
    """

    name = "dynamickv"
    #: candidates per layer capped at ``r_max * (B - w)`` (DynamicKV); False: a layer holds its whole
    #: prompt until its first re-allocation (CAKE, whose cascade runs after every layer)
    capped: ClassVar[bool] = True
    summary = "layer-adaptive budgets from the model's attention, re-allocated every m=4 layers"
    paper = "Zhou et al. 2025, DynamicKV: Task-Aware Adaptive KV Cache Compression (arXiv 2412.14838)"

    window: int = 8
    kernel: int = 7
    pooling: DynamicPooling = "avg"
    quiet_sinks: int = 0
    r_max: float = 10.0
    update_every: int = 4
    allocation: Allocation = "authors"
    min_ratio: float = 0.0
    min_tokens: int = 0
    normalize: Normalize = "none"
    sink: int = 0
    rows: Rows = "shared"
    tau1: float = 1.0
    tau2: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_every < 1:
            raise BudgetError(f"{self.name}: update_every (m) must be >= 1, got {self.update_every}")
        if not self.r_max >= 1:
            raise BudgetError(f"{self.name}: r_max must be >= 1, got {self.r_max}")
        if self.pooling not in (*POOLINGS, "auto"):
            raise BudgetError(
                f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )
        if self.allocation not in ("authors", "candidates", "preference"):
            raise BudgetError(
                f"{self.name}: allocation must be 'authors', 'candidates' or 'preference', "
                f"got {self.allocation!r}"
            )
        if not (self.tau1 > 0 and self.tau2 > 0):
            raise BudgetError(f"{self.name}: tau1 and tau2 must be > 0, got {self.tau1} and {self.tau2}")
        if self.normalize not in ("none", "sum"):
            raise BudgetError(f"{self.name}: normalize must be 'none' or 'sum', got {self.normalize!r}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise BudgetError(f"{self.name}: min_ratio must be in [0, 1], got {self.min_ratio}")
        if self.min_tokens < 0:
            raise BudgetError(f"{self.name}: min_tokens must be >= 0, got {self.min_tokens}")
        if self.quiet_sinks < 0:
            raise BudgetError(f"{self.name}: quiet_sinks must be >= 0, got {self.quiet_sinks}")

    def begin(self, info: PrefillInfo) -> None:
        super().begin(info)
        self._row_methods: list[DynamicKV] | None = None
        if self.rows == "separate" and info.rows > 1:
            self._row_methods = [dataclasses.replace(self, rows="shared") for _ in range(info.rows)]
            for r, method in enumerate(self._row_methods):
                method.begin(info.alone(r))
            self._row_counts: dict[int, torch.Tensor] = {}  # layer -> [b, h] tokens each (row, head) holds
            return
        self._pooling = family_pooling(info.model_type) if self.pooling == "auto" else self.pooling
        self._base = info.budget - self.window
        self._uniform = info.n_eff <= info.budget
        cap = self.r_max * self._base if self.capped else float("inf")
        self._bs = int(min(cap, info.n_eff - self.window))
        self._floor = min(max(int(self.min_ratio * self._base), self.min_tokens), self._base, self._bs)
        # per layer, aligned with the layer's cache order: the candidates' selection scores, and the
        # scores the allocation counts (all pooled scores for "authors", the candidates' otherwise)
        self._cand: list[torch.Tensor] = []
        self._counted: list[torch.Tensor] = []
        self._kept: list[int] = []
        self._preference: list[float] = []  # allocation="preference": CAKE's P per layer

    def score(self, obs: Observation) -> torch.Tensor:
        return obs.scores(
            self.window, kernel=self.kernel, pooling=self._pooling, quiet_sinks=self.quiet_sinks
        )

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        info = self._require_info()
        if self._row_methods is not None:
            return self._compress_rows(layer, obs, info)
        if self._uniform:  # the prompt fits the budget: keep it (minus padding), as every method does
            return [(layer, select_top(self.score, obs, info.budget, self.window, info, self.head_alpha()))]
        scores = self.score(obs)
        values, indices = stable_topk(scores, self._bs)
        order = indices.argsort(dim=-1)  # store candidates in prompt order
        pos = indices.gather(-1, order)
        self._cand.append(values.gather(-1, order))
        self._kept.append(self._bs)
        if self.allocation == "preference":  # shares from the attention itself: nothing to count
            self._preference.append(layer_preference(obs.attention(), self.window, self.tau1, self.tau2))
        else:
            self._counted.append(self._counted_scores(scores, pos))
        win = torch.arange(info.n - self.window, info.n, device=pos.device).expand(
            *pos.shape[:2], self.window
        )
        ops: list[KeepOp] = [(layer, torch.cat([pos, win], dim=-1))]
        last = layer == info.num_layers - 1
        if last or (layer + 1) % self.update_every == 0:
            ops += self._reallocate(layer, info)
        return ops

    def _counted_scores(self, scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """What the global top-k counts for this layer: every pooled score (``"authors"``) or the
        candidates' at ``pos`` (``"candidates"``), normalised and without the sink when asked."""
        counted = normalized_scores(scores, self.sink) if self.normalize == "sum" else scores
        if self.sink and self.normalize != "sum":
            counted = counted.clone()
            counted[..., : self.sink] = float("-inf")
        return counted if self.allocation == "authors" else counted.gather(-1, pos)

    def _layer_counts(self, n_layers: int) -> torch.Tensor:
        """``[n_layers]``: how many of the global top ``base * n_layers * H_kv`` scores fall in each
        layer, summed over the batch rows (the allocation is shared by the batch)."""
        b, h = self._counted[0].shape[:2]
        width = max(c.shape[-1] for c in self._counted)
        device = self._counted[0].device
        padded = torch.full((n_layers, b, h, width), float("-inf"), device=device)
        for j, c in enumerate(self._counted):
            padded[j, ..., : c.shape[-1]] = c.to(device)  # layers may sit on other devices
        flat = padded.permute(1, 0, 2, 3).reshape(b, -1)  # per batch row: layer x head x position
        k = min(self._base * n_layers * h, flat.shape[-1])
        counts = torch.zeros(n_layers, dtype=torch.long)
        for row in range(b):
            vals, idx = stable_topk(flat[row], k)
            idx = idx[torch.isfinite(vals)]
            counts += torch.bincount(idx // (h * width), minlength=n_layers).cpu()
        return counts

    def _reallocate(self, layer: int, info: PrefillInfo) -> list[KeepOp]:
        """Re-distribute the global budget over layers ``0..layer`` and shrink them."""
        n_layers = layer + 1
        b, h = self._cand[0].shape[:2]
        total = self._base * info.num_layers - self._floor * n_layers  # what is shared by attention
        caps = torch.tensor(self._kept, dtype=torch.long) - self._floor
        if self.allocation == "preference":
            shares = torch.tensor(self._preference, dtype=torch.float64)
            if not float(shares.sum()) > 0:  # no dispersion or no shift anywhere: equal shares
                shares = torch.ones(n_layers, dtype=torch.float64)
            alloc = candidate_allocation(shares, total, caps)
        elif self.allocation == "authors":
            counts = self._layer_counts(n_layers)
            per_row = torch.div(counts, b, rounding_mode="floor")
            target = self._base * h if layer == info.num_layers - 1 else None
            alloc = authors_allocation(per_row, n_layers, self._bs - self._floor, total, target)
            # fix: a layer never grows back (their slice runs into the window and duplicates it); a
            # share above what a layer holds goes to the others in proportion, so budgets add up
            alloc = candidate_allocation(alloc.double(), int(alloc.sum()), caps)
        else:
            counts = self._layer_counts(n_layers)
            alloc = candidate_allocation(counts.double() / (h * b), total, caps)
        alloc = alloc + self._floor
        ops: list[KeepOp] = []
        for j in range(n_layers):
            new = int(alloc[j])
            if new >= self._kept[j]:  # a layer never grows back
                continue
            old = self._kept[j]
            self._kept[j] = new
            if self.head_adaptive:  # the heads share `h * new` (counts differ per head)
                keep, cand = shrink_candidates(self._cand[j], new, self.window, self.head_alpha())
                if self.allocation == "candidates":
                    index = keep if isinstance(keep, torch.Tensor) else keep.index
                    at = index[..., : cand.shape[-1]].clamp_max(self._counted[j].shape[-1] - 1)
                    counted = self._counted[j].gather(-1, at)
                    self._counted[j] = torch.where(torch.isfinite(cand), counted, cand)
                self._cand[j] = cand
                ops.append((j, keep))
                continue
            # every head keeps its top `new` candidates (in cache order), then its window
            top = stable_topk(self._cand[j], new)[1].sort(dim=-1).values
            self._cand[j] = self._cand[j].gather(-1, top)
            if self.allocation == "candidates":
                self._counted[j] = self._counted[j].gather(-1, top)
            win = torch.arange(old, old + self.window, device=top.device).expand(b, h, self.window)
            ops.append((j, torch.cat([top, win], dim=-1)))
        return ops

    # -- rows="separate": every row allocated alone ---------------------------------------------
    def _compress_rows(self, layer: int, obs: Observation, info: PrefillInfo) -> list[KeepOp]:
        """Each row's own DynamicKV on the row's own tokens; their keep operations, merged per layer.

        A row's tokens are the last ``length(r)`` positions (left padding), so its first keep of a
        layer is offset back into the padded prompt; later keeps (re-allocations) are relative to
        what the row holds, as the cache expects. A row without an operation on a layer keeps it."""
        per_layer: dict[int, dict[int, KeepOp]] = {}
        for r, method in enumerate(self._row_methods or []):
            offset = info.n - info.length(r)
            own = Observation(
                obs.queries[r : r + 1], obs.keys[r : r + 1, :, offset:], obs.scaling, None, obs.layer
            )
            for j, index in method.compress(layer, own):
                per_layer.setdefault(j, {})[r] = (offset if j == layer else 0, index)
        device, h = obs.keys.device, obs.num_kv_heads
        return [(j, self._merge_rows(j, rows, info, h, device)) for j, rows in sorted(per_layer.items())]

    def _merge_rows(self, j: int, rows: dict, info: PrefillInfo, h: int, device) -> torch.Tensor | Selection:
        parts = []
        for r in range(info.rows):
            offset, index = rows.get(r, (0, None))
            if r not in rows or index is None:  # keep what the row holds (a new layer: its real tokens)
                held = self._row_counts.get(j)
                if held is None:
                    n_r = info.length(r)
                    idx = torch.arange(info.n - n_r, info.n, device=device).expand(h, n_r)
                    parts.append((idx, torch.full((h,), n_r, dtype=torch.long, device=device)))
                else:
                    k = int(held[r].max())
                    idx = torch.arange(k, device=device).expand(h, k)
                    parts.append((idx, held[r].to(device)))
                continue
            if isinstance(index, Selection):
                idx, counts = index.index[0] + offset, index.counts[0]
            else:
                idx = index[0] + offset
                counts = torch.full((idx.shape[0],), idx.shape[-1], dtype=torch.long, device=idx.device)
            parts.append((idx.to(device), counts.to(device)))
        width = max(p[0].shape[-1] for p in parts)
        index = torch.zeros(info.rows, h, width, dtype=torch.long, device=device)
        counts = torch.stack([c for _, c in parts])
        for r, (idx, _) in enumerate(parts):
            index[r, :, : idx.shape[-1]] = idx
        self._row_counts[j] = counts.cpu()
        if int(counts.min()) == int(counts.max()):
            return index[..., : int(counts.max())]
        return Selection(index, counts)

    def budgets(self) -> list[int]:
        """Current per-layer budgets (window included); final after the last layer. With
        ``rows="separate"``: the longest row's."""
        if self._row_methods is not None:
            longest = max(range(len(self._row_methods)), key=self._require_info().length)
            return self._row_methods[longest].budgets()
        if self._uniform:
            return list(self._budgets)
        return [k + self.window for k in self._kept]

"""DynamicKV: per-layer budgets decided from the model's own attention, progressively during prefill."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import capped_allocation
from ..errors import BudgetError
from ..scoring import Observation, Pooling, stable_topk
from .base import KeepOp, Method, PrefillInfo, select_top


@dataclass
class DynamicKV(Method):
    """Task-adaptive, layer-adaptive budgets.

    Paper: Zhou et al., "DynamicKV: Task-Aware Adaptive KV Cache Compression for Long Context
    LLMs", EMNLP 2025 Findings (arXiv 2412.14838).

    With ``L`` layers, ``base = B - w`` and the global budget ``G = base * L``, each layer keeps as
    candidates its top ``bs = min(r_max * base, n - w)`` pooled-score tokens per KV head (plus the
    window). Every ``m`` layers, and after the last one, the global top ``base * (l + 1) * H_kv``
    candidate scores over all layers so far decide each layer's share; shares are scaled to the
    whole of ``G`` (so early layers hold more until later updates shrink them), capped at what a
    layer still holds (layers never grow back, the excess goes to the others in proportion),
    rounded with the largest-remainder rule, and every layer is cut to its top tokens. After the
    last layer the kept non-window tokens sum to ``G`` exactly, so the average layer holds ``B``.

    Unlike the authors' code: window tokens are never duplicated, the rounding remainder is not
    dumped on the newest layer, prompts shorter than the window do not crash, ``m`` is a parameter
    and K/V are not repeated per query head.

    Attributes:
        window: observation window ``w`` (always kept), 8.
        kernel: pooling kernel ``k``, 7.
        pooling: ``"avg"`` (the authors' default; their Mistral/Qwen2 scripts use ``"max"``).
        r_max: a layer holds at most ``r_max * (B - w)`` non-window tokens, 10.
        update_every: re-allocation interval ``m`` in layers, 4.
    """

    name = "dynamickv"
    summary = "layer-adaptive budgets from the model's attention, re-allocated every m=4 layers"
    paper = "Zhou et al. 2025, DynamicKV: Task-Aware Adaptive KV Cache Compression (arXiv 2412.14838)"

    window: int = 8
    kernel: int = 7
    pooling: Pooling = "avg"
    r_max: float = 10.0
    update_every: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_every < 1:
            raise BudgetError(f"dynamickv: update_every (m) must be >= 1, got {self.update_every}")
        if self.r_max < 1:
            raise BudgetError(f"dynamickv: r_max must be >= 1, got {self.r_max}")
        if self.pooling not in ("avg", "max", "none"):
            raise BudgetError(f"dynamickv: pooling must be 'avg', 'max' or 'none', got {self.pooling!r}")

    def begin(self, info: PrefillInfo) -> None:
        super().begin(info)
        self._base = info.budget - self.window
        self._uniform = info.n_eff <= info.budget
        self._bs = int(min(self.r_max * self._base, info.n_eff - self.window))
        # per layer: scores of the non-window tokens the layer holds, aligned with its cache order
        self._cand: list[torch.Tensor] = []
        self._kept: list[int] = []

    def score(self, obs: Observation) -> torch.Tensor:
        return obs.scores(self.window, kernel=self.kernel, pooling=self.pooling)

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        info = self._require_info()
        if self._uniform:  # the prompt fits the budget: keep it (minus padding), as every method does
            return [(layer, select_top(self.score, obs, info.budget, self.window, info))]
        scores = self.score(obs)
        values, indices = stable_topk(scores, self._bs)
        order = indices.argsort(dim=-1)  # store candidates in prompt order
        pos = indices.gather(-1, order)
        self._cand.append(values.gather(-1, order))
        self._kept.append(self._bs)
        win = torch.arange(info.n - self.window, info.n, device=pos.device).expand(
            *pos.shape[:2], self.window
        )
        ops: list[KeepOp] = [(layer, torch.cat([pos, win], dim=-1))]
        last = layer == info.num_layers - 1
        if last or (layer + 1) % self.update_every == 0:
            ops += self._reallocate(layer, info)
        return ops

    def _reallocate(self, layer: int, info: PrefillInfo) -> list[KeepOp]:
        """Re-distribute the global budget over layers ``0..layer`` and shrink them."""
        n_layers = layer + 1
        b, h = self._cand[0].shape[:2]
        padded = torch.full((n_layers, b, h, self._bs), float("-inf"), device=self._cand[0].device)
        for j, cand in enumerate(self._cand):
            padded[j, ..., : cand.shape[-1]] = cand.to(padded.device)  # layers may sit on other devices
        flat = padded.permute(1, 0, 2, 3).reshape(b, -1)  # per batch row: layer x head x position
        k = min(self._base * n_layers * h, flat.shape[-1])
        counts = torch.zeros(n_layers, dtype=torch.double)
        for row in range(b):
            vals, idx = stable_topk(flat[row], k)
            idx = idx[torch.isfinite(vals)]
            counts += torch.bincount(idx // (h * self._bs), minlength=n_layers).double().cpu()
        shares = counts / (h * b)
        caps = torch.tensor(self._kept, dtype=torch.long)
        alloc = capped_allocation(shares, self._base * info.num_layers, caps)
        ops: list[KeepOp] = []
        for j in range(n_layers):
            new = int(alloc[j])
            if new >= self._kept[j]:
                continue
            cand = self._cand[j]
            keep = stable_topk(cand, new)[1].sort(dim=-1).values
            self._cand[j] = cand.gather(-1, keep)
            old = self._kept[j]
            self._kept[j] = new
            win = torch.arange(old, old + self.window, device=keep.device).expand(b, h, self.window)
            ops.append((j, torch.cat([keep, win], dim=-1)))
        return ops

    def budgets(self) -> list[int]:
        """Current per-layer budgets (window included); final after the last layer."""
        if self._uniform:
            return list(self._budgets)
        return [k + self.window for k in self._kept]

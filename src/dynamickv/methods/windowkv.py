"""WindowKV: whole windows of consecutive tokens, selected once per layer group."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..budget import capped_allocation, largest_remainder
from ..errors import BudgetError
from ..scoring import Observation, stable_topk
from ..selection import Selection, compose, top_sorted
from .base import KeepOp, Method, PrefillInfo, keep_all_needed, select_top

Mode = Literal["localization", "aggregation", "auto"]

#: The paper's settings for Llama-3-8B (32 layers): (omega, alpha) per task mode.
PAPER_SETTINGS = {"localization": (8, 16), "aggregation": (16, 32)}
#: Normalised entropy of the window scores below which ``auto`` picks localization (see ``decide``).
AUTO_ENTROPY_THRESHOLD = 0.75
#: Tokens just before the observation window that ``auto`` leaves out: every prompt's last queries
#: attend to their own neighbourhood (recency), which says nothing about where the answer is.
AUTO_RECENT_TOKENS = 256
#: Fewer windows than this left to measure: too little context to call anything concentrated.
AUTO_MIN_WINDOWS = 8


def default_group_size(num_layers: int) -> int:
    """The paper's ``gamma = 8`` for 32 layers; otherwise a divisor of the depth giving about four
    groups (ties go to more groups), so that every group has the same size."""
    if num_layers == 32:
        return 8
    divisors = [g for g in range(1, num_layers + 1) if num_layers % g == 0]
    return min(divisors, key=lambda g: (abs(num_layers / g - 4), g))


@dataclass
class WindowKV(Method):
    """Keep whole windows of ``omega`` consecutive tokens, chosen by the first layer of each group.

    Paper: Zuo et al., "WindowKV: Task-Adaptive Group-Wise KV Cache Window Selection for Efficient
    LLM Inference" (arXiv 2503.17922).

    The review context before the ``alpha`` observation tokens is cut into windows of ``omega``
    tokens (aligned at position 0; the remainder of fewer than ``omega`` tokens just before the
    observation window is kept with it). Token scores are the observation queries' attention, summed
    and averaged over all heads, so one selection serves every head. A window scores the mean of its
    tokens (localization) or of its top ``omega / 2`` tokens (aggregation); the best whole windows
    are kept until the group's budget is filled. Layers come in groups of ``gamma``: only a group's
    first layer scores and selects, the others keep their own K/V at the same positions. Group review
    budgets follow the authors' arithmetic pyramid: ``last = B_r * gamma // lambda``,
    ``first = 2 B_r - last``, linear over groups, with ``B_r = B - alpha`` so that budgets average
    to ``B`` including the window.

    ``mode="auto"`` needs no classifier, no training and no extra model: at the first compressed
    layer it measures how concentrated the observation window's attention over the context windows is
    (:meth:`window_entropy`) and picks localization when it is concentrated (:meth:`decide`). This is
    the paper's distinction read from the model itself: localization tasks (QA) draw on a few places of
    the context, aggregation tasks (summaries, counting) on all of it. What it does *not* do is recover
    the task categories the paper's trained classifier reproduces (QA -> localization, everything else
    -> aggregation): on SmolLM2-135M and Qwen2.5-Coder-0.5B, first-layer attention is diffuse for every
    RULER, NIAH and multi_news prompt, so ``auto`` picks aggregation, and QA prompts are no more
    concentrated than needle retrieval, whose categories say aggregation although it is the most local
    task there is. ``benchmarks/windowkv_auto.py`` measures the agreement and the statistics tried
    (``docs/results/windowkv_auto.txt``). Deciding later does not help:
    ``benchmarks/windowkv_mode_layers.py`` finds no layer, at any depth, where one rule for both models
    beats answering aggregation for every RULER sample in the papers' protocol. Rules fitted to one
    model's labels do better, but each model needs its own feature, layer and direction, even inside
    one family: Qwen2.5-Coder-0.5B's rule agrees with 51% of Qwen2.5-Coder-1.5B's samples
    (``docs/evaluation.md``, ninth and tenth sessions). When the category is known, pass the mode explicitly
    (``dynamickv eval --windowkv-mode category`` does so per sample).

    Attributes:
        mode: ``"localization"``, ``"aggregation"`` or ``"auto"``.
        omega: window size; ``None``: the paper's value for the mode (8 / 16).
        alpha: observation window; ``None``: the paper's value for the mode (16 / 32).
        gamma: layers per group; ``None``: 8 for 32 layers, else about four equal groups.
        lam: pyramid ratio ``lambda``, 14.
    """

    name = "windowkv"
    summary = "whole token windows chosen per layer group, pyramid budgets, task-adaptive mode"
    paper = "Zuo et al. 2025, WindowKV: Task-Adaptive Group-Wise KV Cache Window Selection (arXiv 2503.17922)"

    unused = frozenset({"window"})  # the observation window is ``alpha``

    window: int = 0
    mode: Mode = "auto"
    omega: int | None = None
    alpha: int | None = None
    gamma: int | None = None
    lam: float = 14.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("localization", "aggregation", "auto"):
            raise BudgetError(f"windowkv: mode must be localization, aggregation or auto, got {self.mode!r}")
        for name in ("omega", "alpha", "gamma"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise BudgetError(f"windowkv: {name} must be > 0, got {v}")
        if self.lam <= 0:
            raise BudgetError(f"windowkv: lambda must be > 0, got {self.lam}")
        self.chosen_mode: str | None = None

    def extra_stats(self) -> dict[str, str]:
        return {"mode": self.chosen_mode} if self.chosen_mode else {}

    # -- parameters per mode ------------------------------------------------------------------
    def settings(self, mode: str) -> tuple[int, int]:
        """``(omega, alpha)`` for ``mode``, explicit values taking precedence."""
        omega, alpha = PAPER_SETTINGS[mode]
        return self.omega or omega, self.alpha or alpha

    @property
    def observation_queries(self) -> int:
        modes = ("localization", "aggregation") if self.mode == "auto" else (self.mode,)
        return max(self.settings(m)[1] for m in modes)

    def validate(self, budget: int, num_layers: int) -> None:
        if budget <= 0:
            raise BudgetError(f"budget must be > 0, got {budget}")
        alpha = self.observation_queries
        if alpha >= budget:
            raise BudgetError(f"windowkv: alpha ({alpha}) must be smaller than the budget ({budget})")
        gamma = self.gamma or default_group_size(num_layers)
        if gamma > num_layers:
            raise BudgetError(f"windowkv: gamma ({gamma}) exceeds the {num_layers} compressed layers")

    # -- budgets ------------------------------------------------------------------------------
    def group_budgets(self, budget: int, num_layers: int, alpha: int, room: int | None = None) -> list[int]:
        """Review-token budget of each group: the arithmetic pyramid, exact integer sum, no group
        above ``room`` (the review tokens the prompt has; the excess goes to the other groups)."""
        gamma = self.gamma or default_group_size(num_layers)
        groups = math.ceil(num_layers / gamma)
        review = budget - alpha
        if groups == 1:
            return [review]
        last = review * gamma // self.lam
        first = 2 * review - last
        steps = torch.arange(groups, dtype=torch.double) / (groups - 1)
        shares = first + (last - first) * steps
        if room is None:
            return [int(v) for v in largest_remainder(shares, review * groups)]
        caps = torch.full((groups,), room, dtype=torch.long)
        return [int(v) for v in capped_allocation(shares, review * groups, caps)]

    def layer_budgets(self, info: PrefillInfo) -> list[int]:
        mode = self.chosen_mode or (self.mode if self.mode != "auto" else "localization")
        alpha = self.settings(mode)[1]
        if info.n_eff <= info.budget:  # the prompt fits the average budget: keep it whole
            return [info.budget] * info.num_layers
        gamma = self.gamma or default_group_size(info.num_layers)
        per_group = self.group_budgets(info.budget, info.num_layers, alpha, room=info.n_eff - alpha)
        return [per_group[layer // gamma] + alpha for layer in range(info.num_layers)]

    # -- prefill ------------------------------------------------------------------------------
    def begin(self, info: PrefillInfo) -> None:
        self.chosen_mode = None if self.mode == "auto" else self.mode
        super().begin(info)
        self._shared: torch.Tensor | None = None

    def decide(self, obs: Observation) -> str:
        """The ``auto`` rule: localization when the window attention is concentrated, i.e. its
        normalised entropy (:meth:`window_entropy`) is below :data:`AUTO_ENTROPY_THRESHOLD`."""
        entropy = self.window_entropy(obs)
        return "localization" if entropy < AUTO_ENTROPY_THRESHOLD else "aggregation"

    def window_entropy(self, obs: Observation) -> float:
        """Normalised entropy (0..1) of the localization window scores at this layer, batch mean.

        Scores are the localization setting's (``omega``-token windows, the last ``alpha`` queries,
        all heads averaged). Two kinds of windows are left out because every prompt concentrates
        there, whatever its task: the first window (attention sinks) and the windows in the last
        :data:`AUTO_RECENT_TOKENS` tokens before the observation window (recency). 1.0 (spread,
        hence aggregation) when fewer than :data:`AUTO_MIN_WINDOWS` windows remain.
        """
        omega, alpha = self.settings("localization")
        alpha = min(alpha, obs.num_obs)
        tok = obs.scores(alpha, per_kv_head=False).clamp_min(0).nan_to_num(0.0)
        m = tok.shape[-1] // omega
        far = m - AUTO_RECENT_TOKENS // omega  # windows [1, far) are neither sinks nor recent
        if far - 1 < AUTO_MIN_WINDOWS:
            return 1.0
        win = tok[..., : m * omega].reshape(tok.shape[0], m, omega).mean(-1)[:, 1:far]
        p = win / win.sum(-1, keepdim=True).clamp_min(1e-12)
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(far - 1)
        return float(ent.mean())

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        info = self._require_info()
        gamma = self.gamma or default_group_size(info.num_layers)
        if layer == 0 and self.mode == "auto":
            self.chosen_mode = self.decide(obs)
            self.plan_budgets(info)
        omega, alpha = self.settings(self.chosen_mode)
        if info.padded:  # every row as it would be alone
            if layer % gamma == 0:
                self._shared = self._select_rows(obs, omega, alpha, self.layer_budget(layer), info)
            assert self._shared is not None
            return [(layer, self._shared.expand_heads(obs.num_kv_heads))]
        budget = self._budgets[layer]
        if keep_all_needed(info, budget) or info.n_eff <= budget:
            return [(layer, select_top(lambda o: o.scores(alpha), obs, budget, alpha, info))]
        if layer % gamma == 0:
            self._shared = self._select(obs, omega, alpha, budget - alpha, info)
        assert self._shared is not None
        return [(layer, self._shared.expand(-1, obs.num_kv_heads, -1))]

    def _select(
        self, obs: Observation, omega: int, alpha: int, review: int, info: PrefillInfo
    ) -> torch.Tensor:
        n, b = info.n, obs.batch
        rest = (n - alpha) % omega  # kept with the observation window
        m = (n - alpha - rest) // omega
        # the remainder is kept with the window, its most recent tokens first when the review budget
        # cannot hold all of it (a sliding layer's visible tokens, a budget just above alpha)
        tail = alpha + min(rest, max(review, 0))
        tok = obs.scores(alpha, per_kv_head=False)[:, : m * omega].reshape(b, m, omega)
        if self.chosen_mode == "aggregation":
            win = tok.topk(max(1, omega // 2), dim=-1).values.mean(-1)
        else:
            win = tok.mean(-1)
        win = win.nan_to_num(float("-inf"))  # windows touching padding are -inf: never chosen
        valid_windows = int(torch.isfinite(win).sum(-1).min())
        count = min((review - rest) // omega if review > rest else 0, valid_windows)
        chosen = stable_topk(win, count)[1].sort(dim=-1).values  # [b, count]
        pos = (chosen.unsqueeze(-1) * omega + torch.arange(omega, device=chosen.device)).reshape(b, -1)
        tail_idx = torch.arange(n - tail, n, device=pos.device).expand(b, tail)
        return torch.cat([pos, tail_idx], dim=-1).unsqueeze(1)

    def _select_rows(
        self, obs: Observation, omega: int, alpha: int, budgets: list[int], info: PrefillInfo
    ) -> Selection:
        """:meth:`_select` for each row of a left-padded batch as if it were alone: its windows are
        aligned at its own first token, its budget is its own, and a row that fits its budget is
        kept whole."""
        n, b, device = info.n, obs.batch, obs.keys.device
        tok = obs.scores(alpha, per_kv_head=False)  # [b, n - alpha]; padding is -inf
        lengths = [info.length(r) for r in range(b)]
        whole = [lengths[r] <= budgets[r] for r in range(b)]
        rest = [0 if whole[r] else (lengths[r] - alpha) % omega for r in range(b)]
        m = [0 if whole[r] else (lengths[r] - alpha - rest[r]) // omega for r in range(b)]
        review = [budgets[r] - alpha for r in range(b)]
        # as in _select: the remainder's most recent tokens when the review budget cannot hold it all
        tail = [lengths[r] if whole[r] else alpha + min(rest[r], max(review[r], 0)) for r in range(b)]
        count = [min((review[r] - rest[r]) // omega if review[r] > rest[r] else 0, m[r]) for r in range(b)]
        width = max(max(m), 1)
        pad = torch.tensor([n - length for length in lengths], device=device).view(b, 1, 1)
        starts = pad + omega * torch.arange(width, device=device).view(1, width, 1)
        at = (starts + torch.arange(omega, device=device).view(1, 1, omega)).clamp_max(n - alpha - 1)
        win = tok.gather(1, at.view(b, -1)).view(b, width, omega)
        if self.chosen_mode == "aggregation":
            win = win.topk(max(1, omega // 2), dim=-1).values.mean(-1)
        else:
            win = win.mean(-1)
        exists = torch.arange(width, device=device).view(1, width) < torch.tensor(m, device=device).view(b, 1)
        win = torch.where(exists, win.nan_to_num(float("-inf")), float("-inf"))
        chosen = top_sorted(win, torch.tensor(count, device=device))  # [b, max(count)] window indices
        offsets = chosen.unsqueeze(-1) * omega + torch.arange(omega, device=device)
        pos = (pad.view(b, 1, 1) + offsets).view(b, -1)
        counts = torch.tensor([c * omega for c in count], device=device).view(b, 1)
        tails = torch.tensor(tail, device=device)
        sel = compose(pos.unsqueeze(1), counts, n - tails, tails)
        return sel if isinstance(sel, Selection) else Selection(sel, torch.full_like(counts, sel.shape[-1]))

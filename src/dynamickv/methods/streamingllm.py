"""StreamingLLM: attention sinks plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BudgetError
from ..scoring import Observation
from .base import KeepOp, Method, keep_all_needed


@dataclass
class StreamingLLM(Method):
    """Keep the first ``sinks`` tokens and the most recent ``B - sinks``.

    Paper: Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024
    (arXiv 2309.17453). Position-only, so it needs no attention scores at all.

    Attributes:
        sinks: initial tokens kept as attention sinks (4 in the paper).
    """

    name = "streamingllm"
    summary = "attention sinks (first 4 tokens) + the most recent tokens; needs no scores"
    paper = "Xiao et al. 2024, Efficient Streaming Language Models with Attention Sinks (arXiv 2309.17453)"

    unused = frozenset({"window"})

    window: int = 0
    sinks: int = 4

    @property
    def observation_queries(self) -> int:
        return 0

    def validate(self, budget: int, num_layers: int) -> None:
        if budget <= self.sinks:
            raise BudgetError(f"streamingllm: budget ({budget}) must exceed the {self.sinks} sink tokens")

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        info = self._require_info()
        budget = self._budgets[layer]
        if keep_all_needed(info, budget):
            return [(layer, None)]
        k = min(budget, info.n_eff)
        n, device = info.n, obs.keys.device
        sinks = min(self.sinks, k)
        recent = torch.arange(n - (k - sinks), n, device=device)
        if info.valid is None:
            first = torch.zeros(obs.batch, dtype=torch.long, device=device)
        else:
            first = (~info.valid).sum(dim=1).to(device)  # left padding: first real token of each row
        sink = first.view(-1, 1) + torch.arange(sinks, device=device).view(1, -1)
        idx = torch.cat([sink, recent.expand(obs.batch, -1)], dim=-1)
        return [(layer, idx.unsqueeze(1).expand(obs.batch, obs.num_kv_heads, k))]

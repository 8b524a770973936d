"""StreamingLLM: attention sinks plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BudgetError
from ..scoring import Observation, first_real
from ..selection import Selection, compose
from .base import KeepOp, Method, keep_all_needed, row_counts


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
        budget = self.layer_budget(layer)
        if not info.padded and keep_all_needed(info, budget):
            return [(layer, None)]
        n, b, device = info.n, obs.batch, obs.keys.device
        ks, sinks = row_counts(info, budget, self.sinks, b)  # per row: kept, sinks among them
        first = first_real(info.valid, b, device)
        width = max(sinks)
        counts = torch.tensor(sinks, dtype=torch.long, device=device).view(b, 1)
        sink = first.view(-1, 1) + torch.arange(width, device=device).view(1, -1)
        recent = torch.tensor([k - s for k, s in zip(ks, sinks, strict=True)], device=device)
        index = compose(sink.unsqueeze(1), counts, n - recent, recent)
        if isinstance(index, Selection):
            return [(layer, index.expand_heads(obs.num_kv_heads))]
        return [(layer, index.expand(b, obs.num_kv_heads, -1))]

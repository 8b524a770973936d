"""FullKV: the uncompressed reference."""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import Observation
from .base import KeepOp, Method, PrefillInfo


@dataclass
class FullKV(Method):
    """Keeps every token. The quality (and memory) reference every other method is measured against.

    The budget is ignored: FullKV's cache is the whole prompt.
    """

    name = "fullkv"
    summary = "no compression: every prompt token is kept (the reference)"
    paper = "-"
    unused = frozenset({"window"})

    window: int = 0

    @property
    def observation_queries(self) -> int:
        return 0

    def validate(self, budget: int, num_layers: int) -> None:
        return None

    def layer_budgets(self, info: PrefillInfo) -> list[int]:
        return [info.n] * info.num_layers

    def compress(self, layer: int, obs: Observation) -> list[KeepOp]:
        return [(layer, None)]

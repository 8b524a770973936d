"""One prefill, every configuration.

The prefill forward pass is the same for every method and budget: each layer attends over its full
prompt K/V, and only what is *kept* differs. :func:`record_prefill` runs it once and keeps every
compressed layer's full K/V and observation queries; :func:`derive_cache` then builds any method's
compressed cache from that record, running the very same selection code as a live prefill, so
the predictions are identical to running each configuration alone while a methods x budgets grid
costs one prefill per sample.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers.cache_utils import Cache

from .budget import Budget, parse_budget
from .cache import output_cache
from .compressor import Compressor, PrefillStats, _Session, valid_mask
from .methods import FullKV, Method, PrefillInfo, get_method
from .scoring import Observation


@dataclass
class _Recorder(FullKV):
    """Keeps everything and remembers each layer's observation (queries + keys)."""

    name = "record"
    queries: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen: dict[int, Observation] = {}

    @property
    def observation_queries(self) -> int:
        return self.queries

    def compress(self, layer, obs):
        self.seen[layer] = obs
        return [(layer, None)]


@dataclass
class PrefillRecord:
    """A full prefill: the uncompressed cache, each compressed layer's observation, the logits."""

    cache: Cache
    observations: dict[int, Observation]
    layers: list[int]
    info: PrefillInfo
    last_logits: torch.Tensor
    seconds: float
    model: Any
    sliding_window: int | None = None
    #: The shortest real prompt of the batch: a ratio budget is a share of it (``info.n_eff`` counts
    #: only what sliding layers can still attend to).
    budget_base: int | None = None

    def release(self) -> None:
        self.observations.clear()


@torch.inference_mode()
def record_prefill(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    observation_queries: int = 64,
) -> PrefillRecord:
    """Prefill ``input_ids`` once, keeping what every method needs to select later."""
    recorder = _Recorder(queries=min(observation_queries, input_ids.shape[-1]))
    comp = Compressor(model, recorder, budget=max(input_ids.shape[-1], 1))
    comp.trim_window = False  # every configuration is derived from the whole prompt's K/V
    t0 = time.perf_counter()
    with comp:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
    seconds = time.perf_counter() - t0
    assert comp.stats is not None and comp.info is not None
    info = dataclasses.replace(comp.info, budget=0)  # the candidates the live prefill's methods saw
    budget_base = valid_mask(attention_mask, input_ids.shape[-1])[1]  # what a ratio budget is of
    return PrefillRecord(
        output_cache(out),
        dict(recorder.seen),
        comp.layers,
        info,
        out.logits[:, -1],
        seconds,
        model,
        comp.sliding_window,
        budget_base,
    )


def derive_cache(
    record: PrefillRecord, method: str | Method, budget: Budget | int | float | str, **params: Any
) -> tuple[Cache, PrefillStats]:
    """The cache ``method`` at ``budget`` would have produced in the recorded prefill."""
    method = get_method(method, **params)
    b = parse_budget(budget).tokens_for(record.budget_base or record.info.n_eff)
    method.validate(b, len(record.layers))
    cache = copy.copy(record.cache)
    cache.layers = [
        SimpleNamespace(keys=layer.keys, values=layer.values) if i in record.layers else copy.copy(layer)
        for i, layer in enumerate(record.cache.layers)
    ]
    info = dataclasses.replace(record.info, budget=b)
    owner = Compressor.__new__(Compressor)
    owner.method, owner.layers, owner.sync_timing = method, record.layers, False
    owner.sliding_window = record.sliding_window
    session = _Session(owner, cache, info)
    t0 = time.perf_counter()
    for ordinal, layer_idx in enumerate(record.layers):
        session.apply(layer_idx, record.observations[ordinal].last(method.observation_queries))
    session.seconds = time.perf_counter() - t0
    return cache, session.finish()

"""``snapkv-decay``, the recommended method's branch on every family but Qwen2: a long span kept whole where ``snapkv-forward`` keeps 12
tokens of it (that it is the measured spec, token for token: ``test_snapkv_forward.py``)."""

from __future__ import annotations

import torch

from dynamickv.methods import RECOMMENDED, PrefillInfo, get_method
from dynamickv.scoring import Observation
from test_methods_reference import run_method


def test_it_is_what_the_recommended_method_runs_on_llama():
    """SmolLM2 (a Llama) gets uniform budgets from ``dynamickv-auto``: this very method."""
    recommended = get_method(RECOMMENDED)
    recommended.begin(PrefillInfo(n=300, n_eff=300, num_layers=2, budget=64, model_type="llama"))
    assert recommended.chosen_allocation == "uniform"
    assert recommended.describe() != get_method("snapkv-decay").describe()  # a method of its own
    assert recommended._chosen.describe() == get_method("snapkv-decay").describe()


def _one_peak_observation(n: int, sink: float, peak_at: int) -> list:
    """One layer whose observation queries attend to the first token (a sink) and to ``peak_at``:
    the keys of those two tokens align with every query, the rest are orthogonal to them."""
    q = torch.zeros(1, 1, 8, 4)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, n, 4)
    k[..., 1] = 1.0
    k[0, 0, 0, 0] = sink
    k[0, 0, peak_at, 0] = 6.0
    return [Observation(q.expand(1, 4, 8, 4), k, 1.0, None, 0)]


def test_keeps_a_long_span_after_the_peak_and_the_sink_alone():
    """At B = 49 (8 window tokens, 41 for the context): the sink itself, then the 40 tokens from the
    peak on, where ``snapkv-forward`` keeps the 12 from the peak and the 11 after the sink, and
    spends the rest on tokens nothing points to."""
    obs = _one_peak_observation(400, sink=12.0, peak_at=200)
    kept, _ = run_method(get_method("snapkv-decay"), obs, 49)
    context = set(kept[0][0, 0].tolist()) - set(range(392, 400))
    assert context == {0} | set(range(200, 240))
    kept_fwd, _ = run_method(get_method("snapkv-forward"), obs, 49)
    context_fwd = set(kept_fwd[0][0, 0].tolist())
    assert set(range(0, 12)) | set(range(200, 212)) <= context_fwd
    assert not set(range(212, 240)) <= context_fwd

"""The recommended method, ``snapkv-forward``: the configuration the quality tables measured, uniform
budgets, and forward pooling's continuation."""

from __future__ import annotations

import pytest
import torch

from dynamickv.methods import RECOMMENDED, get_method
from dynamickv.scoring import pool_scores
from test_methods_reference import make_obs, run_method


def test_it_is_the_recommended_method():
    assert RECOMMENDED == "snapkv-forward"


@pytest.mark.parametrize("budget", [24, 64, 130])
def test_keeps_exactly_the_tokens_of_the_measured_snapkv_spec(budget):
    """docs/evaluation.md measured ``snapkv:window=8;pooling=forward;kernel=12``; the named method
    must be that configuration, token for token, with every layer at exactly B per KV head."""
    obs = make_obs(300, 6, queries=8, seed=11)
    named, _ = run_method(get_method("snapkv-forward"), obs, budget)
    spec, _ = run_method(get_method("snapkv:window=8;pooling=forward;kernel=12"), obs, budget)
    for a, b in zip(named, spec, strict=True):
        assert torch.equal(a, b)
        assert a.shape[-1] == budget


def test_a_spike_keeps_the_eleven_tokens_after_it():
    """Forward pooling (k=12) lends a token's score to the 11 after it, so one sharply attended token
    keeps its continuation, where centred max pooling keeps the tokens around it."""
    scores = torch.full((1, 1, 100), 1e-4)
    scores[..., 40] = 1.0
    forward = pool_scores(scores, 12, "forward")
    centred = pool_scores(scores, 7, "max")
    assert set(torch.topk(forward, 12).indices.flatten().tolist()) == set(range(40, 52))
    assert set(torch.topk(centred, 7).indices.flatten().tolist()) == set(range(37, 44))

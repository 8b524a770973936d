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


def test_decay_pooling_is_a_fading_forward_loan():
    """``decay``: each token scores the max of ``s[t - d] * 2**(-d / k)`` for ``d < 4k`` (a plain
    transcription on random scores), so the kept span after a peak grows with the budget."""
    k = 5
    s = torch.rand(2, 3, 60)
    s[0, 1, :4] = float("-inf")  # left padding lends nothing
    want = torch.empty_like(s)
    for t in range(60):
        want[..., t] = torch.stack([s[..., t - d] * 2 ** (-d / k) for d in range(min(4 * k, t + 1))]).amax(0)
    assert torch.allclose(pool_scores(s, k, "decay"), want)

    spike = torch.full((1, 1, 200), 1e-4)
    spike[..., 40] = 1.0
    spike[..., 120] = 0.3
    pooled = pool_scores(spike, 12, "decay")
    for budget in (12, 20):  # all from the strongest peak: 0.3 is worth 2**(-20.8 / 12) of it
        assert set(torch.topk(pooled, budget).indices.flatten().tolist()) == set(range(40, 40 + budget))
    kept = set(torch.topk(pooled, 40).indices.flatten().tolist())
    assert set(range(40, 69)) <= kept and 120 in kept  # a 29-token span, and the second peak's start

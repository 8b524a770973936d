"""``snapkv-forward`` (the recommendation before ``snapkv-decay``): the configuration the allocation
screen measured, uniform budgets, forward pooling's continuation; and the lending poolings."""

from __future__ import annotations

import pytest
import torch

from dynamickv.methods import get_method
from dynamickv.scoring import Observation, pool_scores
from test_methods_reference import make_obs, run_method

MEASURED = [
    ("snapkv-forward", "snapkv:window=8;pooling=forward;kernel=12"),
    ("snapkv-decay", "snapkv:window=8;pooling=decay;kernel=12;quiet_sinks=4"),
]


@pytest.mark.parametrize("budget", [24, 64, 130])
@pytest.mark.parametrize(("name", "spec"), MEASURED)
def test_keeps_exactly_the_tokens_of_the_measured_snapkv_spec(name, spec, budget):
    """docs/evaluation.md measured these specs; each named method must be its configuration, token
    for token, with every layer at exactly B per KV head."""
    obs = make_obs(300, 6, queries=8, seed=11)
    named, _ = run_method(get_method(name), obs, budget)
    measured, _ = run_method(get_method(spec), obs, budget)
    for a, b in zip(named, measured, strict=True):
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


@pytest.mark.parametrize("mode", ["decay", "forward", "max"])
def test_quiet_sinks_keep_their_score_and_lend_none(mode):
    """``quiet``: a marked token scores as itself and lends nothing; every other token scores as if
    the marked one were 0 (a plain transcription: pool with the sink zeroed, then restore it)."""
    s = torch.rand(2, 3, 80)
    s[..., 0] = 1e5  # an attention sink
    quiet = torch.zeros(2, 1, 80, dtype=torch.bool)
    quiet[..., :4] = True
    got = pool_scores(s, 6, mode, quiet)
    zeroed = s.clone()
    zeroed[..., :4] = 0
    want = pool_scores(zeroed, 6, mode)
    want[..., :4] = torch.maximum(want[..., :4], s[..., :4])
    assert torch.equal(got, want)
    assert got[..., 0].eq(1e5).all() and got[..., 4:].lt(1e3).all()


def test_quiet_sinks_stop_the_sink_taking_a_small_budget():
    """With ``decay`` pooling a sink 10^5 times the median lends enough to the 47 tokens after it to
    outrank every real peak (measured on SmolLM2, docs/evaluation.md); quiet sinks keep the sink
    itself and give the rest of the budget to the peak's span. The sinks are the first real tokens
    of each row, after left padding."""
    s = torch.full((2, 1, 300), 1e-4)
    s[0, 0, 0] = 1e3
    s[1, 0, 10] = 1e3  # row 1 is left-padded by 10
    s[0, 0, 150] = s[1, 0, 150] = 1.0
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, :10] = False
    obs = Observation(torch.zeros(2, 1, 4, 8), torch.zeros(2, 1, 304, 8), 1.0, None, 0)
    obs._sums[4] = torch.cat([s, torch.zeros(2, 1, 4)], dim=-1)
    loud = pool_scores(s, 12, "decay")
    assert set(loud[0, 0].topk(20).indices.tolist()) == set(range(20))  # the sink's loan wins
    obs.valid = torch.cat([valid, torch.ones(2, 4, dtype=torch.bool)], dim=-1)
    pooled = obs.scores(4, kernel=12, pooling="decay", quiet_sinks=4)
    for row, sink in ((0, 0), (1, 10)):
        kept = set(pooled[row, 0].topk(20).indices.tolist())
        assert kept == {sink} | set(range(150, 169))


@pytest.mark.parametrize("spec", ["snapkv:quiet_sinks=-1", "dynamickv:quiet_sinks=-2"])
def test_negative_quiet_sinks_is_refused(spec):
    with pytest.raises(ValueError, match="quiet_sinks must be >= 0"):
        get_method(spec)

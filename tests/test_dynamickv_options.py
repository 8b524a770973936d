"""DynamicKV's robust-allocation options: forward pooling, normalised counting, sink, floor, family pooling."""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.methods import get_method
from dynamickv.methods.allocation import normalized_scores
from dynamickv.scoring import pool_scores
from test_methods_reference import make_obs, run_method
from tiny import tiny_model


def test_forward_pooling_lends_a_score_to_the_tokens_after_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 50, generator=g)
    out = pool_scores(x, 5, "forward")
    for j in range(50):
        expect = x[..., max(0, j - 4) : j + 1].max(dim=-1).values
        assert torch.equal(out[..., j], expect)
    peak = torch.zeros(1, 1, 20)
    peak[..., 6] = 1.0
    assert pool_scores(peak, 4, "forward")[0, 0].nonzero().flatten().tolist() == [6, 7, 8, 9]


def test_normalized_scores_are_distributions_without_the_sink():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(2, 3, 40, generator=g)
    s[1, :, 30:] = float("-inf")  # padding stays out
    out = normalized_scores(s, sink=4)
    assert torch.isinf(out[..., :4]).all() and torch.isinf(out[1, :, 30:]).all()
    finite = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    torch.testing.assert_close(finite.sum(-1), torch.ones(2, 3))
    # within a head the order is unchanged, so the layer's own selection is too
    assert torch.equal(out[0, 0, 4:].argsort(), s[0, 0, 4:].argsort())


class _Scored:
    """An observation whose (non-window) scores are given: the allocation's input, made by hand."""

    def __init__(self, scores, window=8):
        self.s, self.n = scores, scores.shape[-1] + window
        self.batch, self.num_kv_heads = scores.shape[:2]

    def last(self, queries):
        return self

    def scores(self, window, kernel=1, pooling="none", per_kv_head=True, quiet_sinks=0):
        assert quiet_sinks == 0  # these tests build their scores by hand
        return pool_scores(self.s, kernel, pooling)


def test_normalizing_moves_budget_towards_concentrated_layers():
    """Layer 0 spreads 90% of its attention evenly; layer 1 gives 90% to the sink and most of the rest
    to 30 tokens. Raw counting gives layer 0 nearly everything (its even share beats layer 1's 30
    tokens); counted as distributions without the sink, layer 1's 30 tokens come first."""
    n = 300
    diffuse = torch.full((1, 2, n), 0.9 / n)
    peaked = torch.full((1, 2, n), 0.01 / n)
    peaked[..., 0] = 0.9
    peaked[..., 100:130] = 0.0029
    obs = [_Scored(diffuse), _Scored(peaked)]
    method = dict(update_every=2, pooling="none", r_max=4.0)
    raw, _ = run_method(get_method("dynamickv", **method), obs, 40)
    norm, _ = run_method(get_method("dynamickv", normalize="sum", sink=1, **method), obs, 40)
    assert raw[1].shape[-1] - 8 < 10  # the sink and little else
    assert norm[1].shape[-1] - 8 >= 30  # room for the sink and (nearly all) the 30 tokens
    assert len(set(range(100, 130)) & set(norm[1][0, 0].tolist())) >= 29
    assert sum(k.shape[-1] for k in raw) == sum(k.shape[-1] for k in norm) == 2 * 40


@pytest.mark.parametrize("family,expected", [("llama", "avg"), ("qwen2", "max")])
def test_family_pooling(family, expected):
    model = tiny_model(family)
    ids = torch.randint(3, 256, (1, 200), generator=torch.Generator().manual_seed(2))
    kept = {}
    for pooling in ("auto", expected):
        with compress(model, "dynamickv", 40, pooling=pooling):
            cache = model(input_ids=ids, use_cache=True).past_key_values
        kept[pooling] = [layer.positions.tolist() for layer in cache.layers]
    assert kept["auto"] == kept[expected]


def test_floor_gives_every_layer_its_minimum():
    obs = make_obs(400, 8, queries=8, seed=4)
    kept, m = run_method(get_method("dynamickv", min_ratio=0.5), obs, 40)
    assert min(k.shape[-1] - 8 for k in kept) >= 16
    plain, _ = run_method(get_method("dynamickv"), obs, 40)
    assert min(k.shape[-1] for k in plain) < min(k.shape[-1] for k in kept)


@pytest.mark.parametrize("budget,floor", [(40, 30), (24, 16)])
def test_floor_in_tokens_binds_where_it_exceeds_the_share_and_budgets_add_up(budget, floor):
    """``min_tokens``: every layer keeps at least that many non-window tokens (capped at B - w), the
    larger of it and ``min_ratio`` applies, and the layers still add up to L * B."""
    obs = make_obs(400, 8, queries=8, seed=4)
    kept, m = run_method(get_method("dynamickv", min_ratio=0.5, min_tokens=floor), obs, budget)
    assert min(k.shape[-1] - 8 for k in kept) >= min(floor, budget - 8)
    assert sum(m.budgets()) == len(kept) * budget
    share, _ = run_method(get_method("dynamickv", min_ratio=0.5), obs, budget)
    assert min(k.shape[-1] for k in share) < min(k.shape[-1] for k in kept)  # it binds here
    # a floor of B - w or more is uniform budgets
    flat, u = run_method(get_method("dynamickv", min_tokens=10_000), obs, budget)
    assert u.budgets() == [budget] * len(flat)
    with pytest.raises(Exception, match="min_tokens must be >= 0"):
        get_method("dynamickv", min_tokens=-1)


@pytest.mark.parametrize("budget", [24, 64])
def test_a_floor_of_the_whole_base_budget_is_uniform_snapkv(budget):
    """With ``min_tokens >= B - w`` nothing is left to re-allocate: DynamicKV keeps exactly the tokens
    uniform SnapKV keeps with the same window, kernel and pooling (so a comparison of the two at a
    high floor compares budgets, not selection)."""
    obs = make_obs(400, 8, queries=8, seed=4)
    spec = {"window": 8, "kernel": 12, "pooling": "forward"}
    dyn, _ = run_method(get_method("dynamickv", min_tokens=10_000, **spec), obs, budget)
    snap, _ = run_method(get_method("snapkv", **spec), obs, budget)
    for d, s in zip(dyn, snap, strict=True):
        assert torch.equal(d.sort(-1).values, s.sort(-1).values)


def test_head_adaptive_dynamickv_counts_add_up_and_differ_per_head():
    """Layer + head adaptive: each layer's total is DynamicKV's layer budget, split unevenly."""
    obs = make_obs(400, 8, queries=8, seed=6)
    uniform, m = run_method(get_method("dynamickv", allocation="candidates"), obs, 40)
    adaptive, a = run_method(get_method("dynamickv", allocation="candidates", heads="adaptive"), obs, 40)
    assert m.budgets() == a.budgets()  # the layer allocation is the same ...

    def per_head(k):
        return [[len(k[b][h]) if isinstance(k, list) else k.shape[-1] for h in range(2)] for b in range(2)]

    split = [per_head(k) for k in adaptive]
    assert any(len({c for row in s for c in row}) > 1 for s in split)  # ... heads differ ...
    for s, budget in zip(split, a.budgets()):
        for row in s:
            assert sum(row) == 2 * budget  # ... and each layer's heads share its budget exactly

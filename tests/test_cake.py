"""``cake``: CAKE (Qin et al., ICLR 2025) against a transcription of its authors' prefill eviction.

The transcription follows github.com/antgroup/cakekv: ``cake/model/modify_llama.py`` (the
preference score and ``hh_score``) and ``cake/cake_cache.py`` + ``cake/utils.py`` (the budgets and
``adjust_budgets``), one layer and one head at a time, on repeated K/V as the authors' code uses them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamickv.errors import BudgetError
from dynamickv.methods import get_method
from dynamickv.methods.cake import indicator_scores
from dynamickv.scoring import Observation
from test_methods_reference import run_method

W = 32


def _layers(n: int = 400, scales=(0.3, 1.0, 3.0, 0.6, 1.5, 0.8), group: int = 2, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer, scale in enumerate(scales):
        q = torch.randn(1, 2 * group, W, 16, generator=g) * 2
        k = torch.randn(1, 2, n, 16, generator=g) * scale
        out.append(Observation(q, k, 1 / math.sqrt(16), None, layer))
    return out


def _authors_attention(obs) -> torch.Tensor:
    """``tmp_attn_weights``: the window queries against every key, causal inside the window, K
    repeated per query head (``repeat_kv``)."""
    h_kv = obs.keys.shape[1]
    group = obs.queries.shape[1] // h_kv
    keys = obs.keys.repeat_interleave(group, dim=1).float()
    logits = obs.queries[..., -W:, :].float() @ keys.transpose(2, 3) * obs.scaling
    mask = torch.full((W, W), torch.finfo(logits.dtype).min)
    cond = torch.arange(W)
    mask.masked_fill_(cond < (cond + 1).view(W, 1), 0)
    logits[..., -W:, -W:] += mask
    return torch.softmax(logits, dim=-1)


def _authors_scores(obs, tau1=1.0, tau2=1.0, gamma=200.0):
    """``(pref_score, hh_score)`` as the authors' attention forward computes them."""
    a = _authors_attention(obs)
    window = a[:, :, -W:, :-W]
    disp = -torch.sum(window * torch.log(window + 1e-10))
    var = torch.var(window, dim=-2).sum(0).sum(0).sum(0)
    pref = float(disp ** (1 / tau1) * var ** (1 / tau2))
    cache = a[:, :, -W:, :].mean(dim=-2) + gamma * a[:, :, -W:, :].var(dim=-2)
    cache = F.avg_pool1d(cache[:, :, :-W], kernel_size=5, padding=2, stride=1)
    h_kv = obs.keys.shape[1]
    hh = cache.reshape(1, h_kv, -1, cache.shape[-1]).mean(dim=-2)
    return pref, hh


def _adjust_budgets(budgets: list[float], total: int, seq_len: int) -> list[int]:
    """``cake/utils.py::adjust_budgets``: floor, cap at ``seq_len``, redistribute, fix the sum."""
    out = [int(b) for b in budgets]
    excess = sum(max(b - seq_len, 0) for b in out)
    out = [min(b, seq_len) for b in out]
    if excess > 0:
        valid = [i for i, b in enumerate(out) if b < seq_len]
        if valid:
            for i in valid:
                out[i] += excess // len(valid)
            for i in valid[: excess % len(valid)]:
                out[i] += 1
    diff = total - sum(out)
    if diff:
        valid = [i for i, b in enumerate(out) if (b < seq_len if diff > 0 else b > 1)]
        step = 1 if diff > 0 else -1
        for i in valid:
            out[i] += step * (abs(diff) // len(valid))
        for i in valid[: abs(diff) % len(valid)]:
            out[i] += step
    return out


def _authors_prefill(layers, budget: int) -> tuple[list[int], list[torch.Tensor]]:
    """Every layer's budget and kept non-window positions (sorted), as ``CakeprefillKVCache``."""
    scores = [_authors_scores(o) for o in layers]
    total = (budget - W) * len(layers)
    prefs = [p for p, _ in scores]
    n = layers[0].n
    budgets = _adjust_budgets([p / sum(prefs) * total for p in prefs], total, n - W)
    kept = [
        hh.topk(b, dim=-1).indices.sort(dim=-1).values for (_, hh), b in zip(scores, budgets, strict=True)
    ]
    return budgets, kept


def test_the_ranking_is_the_authors_hh_score():
    for obs in _layers():
        ours = indicator_scores(obs, W, 200.0, 5, "avg")
        _, theirs = _authors_scores(obs)
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("budget", [48, 64, 96])
def test_budgets_and_kept_tokens_match_the_authors_prefill(budget):
    """Budgets: the authors' up to their rounding (each within one token, same sum). Kept tokens: each
    layer's top ``b_l`` of the authors' ``hh_score``, so where the budgets agree the kept positions
    are the authors' exactly."""
    layers = _layers()
    kept, m = run_method(get_method("cake"), layers, budget)
    ours = [b - W for b in m.budgets()]
    theirs, their_kept = _authors_prefill(layers, budget)
    assert sum(ours) == sum(theirs) == (budget - W) * len(layers)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1
    assert len(set(ours)) > 2  # the layers do differ here
    same = 0
    for obs, k, b_l, their_b, their_pos in zip(layers, kept, ours, theirs, their_kept, strict=True):
        _, hh = _authors_scores(obs)
        assert torch.equal(k[..., :b_l].sort(dim=-1).values, hh.topk(b_l, dim=-1).indices.sort(dim=-1).values)
        assert torch.equal(k[..., b_l:], torch.arange(obs.n - W, obs.n).expand(1, 2, W))
        if b_l == their_b:
            assert torch.equal(k[..., :b_l].sort(dim=-1).values, their_pos)
            same += 1
    assert same >= 1


def test_the_cascade_ends_where_the_one_shot_allocation_does():
    """CAKE's claim: cutting after every layer gives the budgets and tokens of allocating once after
    the last layer, because a layer's share only shrinks as layers join."""
    layers = _layers()
    cascaded, m1 = run_method(get_method("cake"), layers, 64)
    once, m2 = run_method(get_method("cake", update_every=len(layers)), layers, 64)
    assert m1.budgets() == m2.budgets()
    for a, b in zip(cascaded, once, strict=True):
        assert torch.equal(a, b)


def test_gamma_zero_ranks_by_the_mean_alone():
    obs = _layers()[2]
    mean = obs.attention()[..., -W:, : obs.n - W].mean(dim=-2).mean(dim=2)
    expect = F.avg_pool1d(mean, kernel_size=5, padding=2, stride=1)
    assert torch.allclose(indicator_scores(obs, W, 0.0, 5, "avg"), expect, atol=1e-8)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("cake:gamma=-1", "gamma must be >= 0"),
        ("cake:pooling=auto", "not CAKE's"),
        ("cake:r_max=3", "'r_max' is not used by cake"),
        ("cake:allocation=authors", "'allocation' is not used by cake"),
    ],
)
def test_bad_parameters_are_refused(spec, message):
    with pytest.raises(BudgetError, match=message):
        get_method(spec)

"""``dynamickv:allocation=preference``: CAKE's layer preference (entropy x variance) as the shares."""

from __future__ import annotations

import math

import pytest
import torch

from dynamickv.budget import capped_allocation
from dynamickv.methods import get_method
from dynamickv.methods.allocation import layer_preference
from dynamickv.scoring import Observation
from test_methods_reference import run_method

W = 8


def _layers(n: int = 300, scales=(0.3, 1.0, 3.0, 0.6), seed: int = 5) -> list[Observation]:
    """Layers whose keys differ in scale, so their attention differs in spread and in shift."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer, scale in enumerate(scales):
        q = torch.randn(1, 4, 16, 16, generator=g) * 2
        k = torch.randn(1, 2, n, 16, generator=g) * scale
        out.append(Observation(q, k, 1 / math.sqrt(16), None, layer))
    return out


def _transcribed_preference(obs: Observation, window: int, tau1: float, tau2: float) -> float:
    """CAKE's formula written out from the paper, one (row, head, query) at a time."""
    attn = obs.attention()[..., -window:, : obs.n - window]
    b, h, g, w, m = attn.shape
    entropy, variance = 0.0, 0.0
    for r in range(b):
        for kv in range(h):
            for q in range(g):
                a = attn[r, kv, q].double()
                entropy += float(-(a * torch.log(a + 1e-10)).sum())
                mean = a.mean(dim=0)
                variance += float(((a - mean) ** 2).sum(dim=0).sum() / (w - 1))
    return entropy ** (1 / tau1) * variance ** (1 / tau2)


@pytest.mark.parametrize("tau1,tau2", [(1.0, 1.0), (0.5, 2.0)])
def test_preference_matches_a_transcription_of_the_formula(tau1, tau2):
    for obs in _layers():
        got = layer_preference(obs.attention(), W, tau1, tau2)
        assert got == pytest.approx(_transcribed_preference(obs, W, tau1, tau2), rel=1e-4)


@pytest.mark.parametrize("budget", [24, 48])
def test_budgets_follow_the_preferences_and_add_up(budget):
    """One re-allocation after the last layer (m = L): each layer's budget is its share of
    L * (B - w) in proportion to its preference, capped at what it holds; the kept tokens of each
    layer are its own top pooled scores (selection is unchanged, only the counts move)."""
    layers = _layers()
    method = get_method("dynamickv", allocation="preference", update_every=len(layers), r_max=4.0)
    kept, m = run_method(method, layers, budget)
    base = budget - W
    prefs = torch.tensor([_transcribed_preference(o, W, 1.0, 1.0) for o in layers], dtype=torch.float64)
    caps = torch.full((len(layers),), min(4 * base, layers[0].n - W), dtype=torch.long)
    expect = capped_allocation(prefs, base * len(layers), caps)
    assert [b - W for b in m.budgets()] == expect.tolist()
    assert sum(m.budgets()) == len(layers) * budget
    assert len(set(expect.tolist())) > 1  # the layers do differ here
    for obs, k in zip(layers, kept, strict=True):
        scores = obs.scores(W, kernel=7, pooling="avg")
        b_l = k.shape[-1] - W
        top = scores.topk(b_l, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(k[..., :b_l].sort(dim=-1).values, top)
        assert torch.equal(k[..., b_l:], torch.arange(obs.n - W, obs.n).expand(1, 2, W))


def test_the_floor_applies_to_preference_shares():
    layers = _layers()
    kept, m = run_method(get_method("dynamickv", allocation="preference", min_ratio=0.75), layers, 40)
    assert min(b - W for b in m.budgets()) >= 24
    assert sum(m.budgets()) == len(layers) * 40


@pytest.mark.parametrize("bad", ["tau1=0", "tau2=-1"])
def test_bad_temperatures_are_refused(bad):
    key, value = bad.split("=")
    with pytest.raises(Exception, match="tau1 and tau2 must be > 0"):
        get_method("dynamickv", allocation="preference", **{key: float(value)})


@pytest.mark.parametrize("budget", [24, 64])
def test_dynamickv_preference_is_the_measured_spec(budget):
    """The allocation screens measured this spec; the named method must keep its tokens, token for
    token, and its layers must add up to L * B with none under the 32-token floor."""
    layers = _layers(n=400, scales=(0.3, 1.0, 3.0, 0.6, 1.5, 0.8))
    spec = "dynamickv:pooling=decay;kernel=12;quiet_sinks=4;allocation=preference;min_tokens=32"
    named, m = run_method(get_method("dynamickv-preference"), layers, budget)
    measured, _ = run_method(get_method(spec), layers, budget)
    for a, b in zip(named, measured, strict=True):
        assert torch.equal(a, b)
    assert sum(m.budgets()) == len(layers) * budget
    assert min(m.budgets()) - W >= min(32, budget - W)

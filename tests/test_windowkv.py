"""WindowKV: whole windows, exact index sharing inside groups, pyramid budgets, auto mode, errors."""

from __future__ import annotations

import pytest
import torch

from dynamickv import BudgetError
from dynamickv.methods import PrefillInfo, get_method
from dynamickv.methods.windowkv import AUTO_ENTROPY_THRESHOLD, AUTO_RECENT_TOKENS, default_group_size
from dynamickv.scoring import Observation
from test_methods_reference import make_obs, run_method


@pytest.mark.parametrize("mode", ["localization", "aggregation"])
def test_whole_windows_and_shared_positions(mode):
    n, L, budget = 600, 8, 128
    obs = make_obs(n, L, queries=32)
    method = get_method("windowkv", mode=mode, gamma=2)
    kept, m = run_method(method, obs, budget)
    omega, alpha = m.settings(mode)
    tail = alpha + (n - alpha) % omega
    for layer, k in enumerate(kept):
        for b in range(k.shape[0]):
            row = k[b, 0].tolist()
            assert all(torch.equal(k[b, 0], k[b, h]) for h in range(k.shape[1]))  # one selection, all heads
            assert row[-tail:] == list(range(n - tail, n))
            body = row[:-tail]
            assert len(body) % omega == 0
            for i in range(0, len(body), omega):  # whole, aligned windows
                assert body[i] % omega == 0 and body[i : i + omega] == list(range(body[i], body[i] + omega))
        if layer % 2:
            assert torch.equal(kept[layer], kept[layer - 1])  # group layers share positions exactly


def test_group_budgets_pyramid_and_average():
    method = get_method("windowkv", mode="localization")
    info = PrefillInfo(n=10_000, n_eff=10_000, num_layers=32, budget=512)
    method.begin(info)
    budgets = method.budgets()
    assert sum(budgets) == 512 * 32  # average B, window included
    review = 512 - 16
    last = review * 8 // 14
    first = 2 * review - last
    groups = [budgets[g * 8] - 16 for g in range(4)]
    assert groups[0] == first and groups[-1] == last
    assert groups == sorted(groups, reverse=True)
    assert all(budgets[g * 8 : (g + 1) * 8] == [budgets[g * 8]] * 8 for g in range(4))


def test_kept_never_exceeds_group_budget_by_windows():
    obs = make_obs(1000, 8, queries=32)
    kept, m = run_method(get_method("windowkv", mode="aggregation", gamma=4), obs, 256)
    budgets = m.budgets()
    omega = 16
    for k, b in zip(kept, budgets):
        assert b - omega < k.shape[-1] <= b


def test_remainder_longer_than_the_review_budget_stays_within_it():
    """(n - alpha) % omega = 15 tokens left over after the whole windows, but a group keeps only 8
    review tokens: the remainder's most recent 8 go with the window, nothing more."""
    n, L, budget = 32 + 16 * 20 + 15, 4, 40  # alpha 32, omega 16
    obs = make_obs(n, L, queries=32)
    kept, m = run_method(get_method("windowkv", mode="aggregation", gamma=4), obs, budget)
    for k in kept:
        assert k.shape[-1] == budget
        assert k[0, 0].tolist() == list(range(n - budget, n))


def test_auto_is_deterministic():
    obs = make_obs(500, 4, queries=32, seed=3)
    modes = []
    for _ in range(3):
        _, m = run_method(get_method("windowkv", mode="auto"), obs, 128)
        modes.append(m.chosen_mode)
    assert len(set(modes)) == 1 and modes[0] in ("localization", "aggregation")


def _layers(n, layers, sharp, seed=0):
    """Observations whose first layer attends to one window (sharp) or evenly (flat)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(layers):
        q = torch.randn(1, 4, 32, 8, generator=g).abs()
        k = torch.randn(1, 2, n, 8, generator=g).abs() * 0.01
        if layer == 0 and sharp:
            k[:, :, 400:408] = q.mean(2, keepdim=True)[:, :2] * 50  # one window attracts everything
        out.append(Observation(q, k, 1.0, None, layer))
    return out


def test_auto_reads_concentration():
    method = get_method("windowkv", mode="auto")
    assert method.decide(_layers(800, 1, sharp=False)[0]) == "aggregation"
    assert method.decide(_layers(800, 1, sharp=True)[0]) == "localization"


@pytest.mark.parametrize("sharp", [False, True])
def test_auto_keeps_exactly_what_its_chosen_mode_keeps(sharp):
    """auto decides at the first layer; budgets, windows and group sharing then follow that mode."""
    obs = _layers(800, 4, sharp)
    kept, m = run_method(get_method("windowkv", mode="auto", gamma=2), obs, 128)
    assert m.chosen_mode == ("localization" if sharp else "aggregation")
    fixed, f = run_method(get_method("windowkv", mode=m.chosen_mode, gamma=2), obs, 128)
    assert m.budgets() == f.budgets()
    assert all(torch.equal(a, b) for a, b in zip(kept, fixed))


@pytest.mark.parametrize(
    "entropy,mode",
    [
        (AUTO_ENTROPY_THRESHOLD - 1e-6, "localization"),
        (AUTO_ENTROPY_THRESHOLD, "aggregation"),
        (1.0, "aggregation"),
    ],
)
def test_decide_compares_window_entropy_with_the_threshold(monkeypatch, entropy, mode):
    method = get_method("windowkv", mode="auto")
    monkeypatch.setattr(method, "window_entropy", lambda obs: entropy)
    assert method.decide(_layers(800, 1, sharp=False)[0]) == mode


def test_window_entropy_leaves_out_sinks_and_recency():
    """Attention on the first window (sinks) or just before the observation window (recency), which
    every prompt has whatever its task, does not count as concentration."""
    n = 800
    q = torch.ones(1, 4, 32, 8)
    k = torch.zeros(1, 2, n, 8)
    method = get_method("windowkv", mode="auto")
    assert method.window_entropy(Observation(q, k, 1.0, None, 0)) == pytest.approx(1.0)
    k[:, :, :8] = 3.0  # nearly all attention on the first window; the rest stays uniform
    assert method.window_entropy(Observation(q, k, 1.0, None, 0)) == pytest.approx(1.0, abs=1e-4)
    k[:, :, n - 16 - AUTO_RECENT_TOKENS : n - 16] = 3.0  # and on the recent tokens
    assert method.window_entropy(Observation(q, k, 1.0, None, 0)) == pytest.approx(1.0, abs=1e-4)
    k[:, :, 400:408] = 3.0  # a hot window in the context: now the attention is concentrated
    assert method.window_entropy(Observation(q, k, 1.0, None, 0)) < 0.5


def test_window_entropy_of_a_short_prompt_is_spread():
    q = torch.ones(1, 4, 32, 8)
    k = torch.zeros(1, 2, AUTO_RECENT_TOKENS + 32, 8)
    k[:, :, 8:16] = 3.0
    method = get_method("windowkv", mode="auto")
    assert method.window_entropy(Observation(q, k, 1.0, None, 0)) == 1.0
    assert method.decide(Observation(q, k, 1.0, None, 0)) == "aggregation"


def test_default_group_size():
    assert default_group_size(32) == 8
    assert default_group_size(28) == 7
    assert default_group_size(24) == 6
    assert 24 % default_group_size(24) == 0


@pytest.mark.parametrize(
    "params,budget,layers",
    [({"omega": 0}, 128, 8), ({"alpha": 128}, 128, 8), ({"gamma": 9}, 128, 8), ({"alpha": -1}, 128, 8)],
)
def test_bad_parameters(params, budget, layers):
    with pytest.raises(BudgetError):
        get_method("windowkv", **params).validate(budget, layers)


@pytest.mark.slow
def test_auto_on_a_real_needle_prompt(smollm2, tmp_path):
    """SmolLM2 on a RULER needle prompt (raw protocol): ``auto`` agrees with the category
    (synthetic -> aggregation), reports it, and keeps exactly what that mode keeps."""
    from dynamickv.eval import ruler
    from dynamickv.replay import derive_cache, record_prefill

    model, tok = smollm2
    sample = ruler.generate("niah_single_2", tok, 1024, 1, seed=3, cache_dir=tmp_path)[0]
    ids = tok(sample.prompt, return_tensors="pt").input_ids[:, :-1]
    record = record_prefill(model, ids)
    auto_cache, stats = derive_cache(record, "windowkv", 128)
    assert stats.extra["mode"] == "aggregation"
    fixed_cache, fixed = derive_cache(record, "windowkv:mode=aggregation", 128)
    assert stats.kept_per_layer == fixed.kept_per_layer and sum(stats.kept_per_layer) <= 128 * 30
    for layer in stats.compressed_layers:
        assert torch.equal(auto_cache.layers[layer].positions, fixed_cache.layers[layer].positions)

"""Every method's kept tokens equal a plain reference computation, on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from dynamickv.methods import METHODS, PrefillInfo, get_method
from dynamickv.scoring import Observation
from dynamickv.selection import Selection
from reference import attention_rows, pool, token_scores, top_positions

B, HQ, HKV, D = 2, 4, 2, 8


def make_obs(n, layers, queries=32, seed=0, valid=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(layers):
        q = torch.randn(B, HQ, queries, D, generator=g) * 2
        k = torch.randn(B, HKV, n, D, generator=g) * 2
        out.append(Observation(q, k, 1 / math.sqrt(D), valid, layer))
    return out


def run_method(method, observations, budget, valid=None, n_eff=None, model_type=""):
    """Apply a method's keep operations to per-layer positions, as the cache does: a ``[b, h, k]``
    tensor per layer, or, when (row, head) counts differ, nested lists ``[b][h] -> positions``."""
    n = observations[0].n
    info = PrefillInfo(
        n=n, n_eff=n_eff or n, num_layers=len(observations), budget=budget, valid=valid, model_type=model_type
    )
    method.begin(info)
    pos = {}
    for layer, obs in enumerate(observations):
        for j, idx in method.compress(layer, obs.last(method.observation_queries)):
            cur = pos.get(j, torch.arange(n).expand(obs.batch, obs.num_kv_heads, n))
            if isinstance(idx, Selection):
                cur = per_head_lists(cur)
                cur = [
                    [
                        [cur[b][h][i] for i in idx.index[b, h, : idx.counts[b, h]].tolist()]
                        for h in range(obs.num_kv_heads)
                    ]
                    for b in range(obs.batch)
                ]
            elif idx is not None:
                cur = (
                    torch.gather(cur, 2, idx)
                    if torch.is_tensor(cur)
                    else [
                        [[cur[b][h][i] for i in idx[b, h].tolist()] for h in range(obs.num_kv_heads)]
                        for b in range(obs.batch)
                    ]
                )
            pos[j] = cur
    return [pos[j] for j in range(len(observations))], method


def per_head_lists(kept):
    """``[b][h] -> positions`` from either form :func:`run_method` returns."""
    if torch.is_tensor(kept):
        return [[kept[b, h].tolist() for h in range(kept.shape[1])] for b in range(kept.shape[0])]
    return kept


def reference_scores(obs, window, kernel=1, mode="none"):
    rows = attention_rows(obs.queries[..., -window:, :], obs.keys, obs.scaling)
    s = token_scores(rows, window, HKV)[..., : obs.n - window]
    return pool(s, kernel, mode)


@pytest.mark.parametrize(
    "name,kernel,mode",
    [("h2o", 1, "none"), ("snapkv", 7, "max")],
)
def test_uniform_methods_match_reference(name, kernel, mode):
    obs = make_obs(n=120, layers=2)
    kept, m = run_method(get_method(name), obs, budget=48)
    for layer, o in enumerate(obs):
        ref = reference_scores(o, m.window, kernel, mode)
        for b in range(B):
            for h in range(HKV):
                expect = top_positions(ref[b, h], 48 - m.window) + list(range(120 - m.window, 120))
                assert kept[layer][b, h].tolist() == expect


def test_pyramidkv_budgets_and_selection():
    L, n, budget = 6, 400, 64
    obs = make_obs(n, L, queries=8)
    kept, m = run_method(get_method("pyramidkv"), obs, budget)
    sizes = [k.shape[-1] for k in kept]
    base, w = budget - 8, 8
    lo = base / 20
    hi = 2 * base - lo
    real = [hi - (hi - lo) * i / (L - 1) for i in range(L)]
    assert sum(sizes) == L * budget  # exact
    assert all(abs((s - w) - r) < 1 for s, r in zip(sizes, real))  # rounding only
    assert sizes == sorted(sizes, reverse=True)
    for layer, o in enumerate(obs):
        ref = reference_scores(o, 8, 7, "max")
        for b in range(B):
            for h in range(HKV):
                assert kept[layer][b, h].tolist() == top_positions(ref[b, h], sizes[layer] - 8) + list(
                    range(n - 8, n)
                )


def test_pyramidkv_falls_back_to_uniform_for_short_prompts():
    obs = make_obs(100, 4, queries=8)
    kept, _ = run_method(get_method("pyramidkv"), obs, 64)  # n < 2 (B - w): pyramid impossible
    assert [k.shape[-1] for k in kept] == [64] * 4


def test_streamingllm_sinks_and_recent():
    obs = make_obs(100, 2, queries=1)
    kept, _ = run_method(get_method("streamingllm"), obs, 20)
    assert kept[0][0, 0].tolist() == [0, 1, 2, 3, *range(84, 100)]


def reference_dynamickv(obs, budget, w=8, kernel=7, mode="avg", r_max=10, m=4):
    """The progressive algorithm of methods.md, written plainly (batch row 0; the test uses
    identical rows)."""
    scores = [reference_scores(o, w, kernel, mode)[0] for o in obs]
    return reference_dynamickv_from_scores(scores, obs[0].n, budget, w, r_max, m)


def reference_dynamickv_from_scores(scores, n, budget, w=8, r_max=10, m=4):
    """``scores``: per layer, pooled non-window scores ``[kv_heads, n - w]``."""
    L = len(scores)
    HKV = scores[0].shape[0]
    base = budget - w
    G = base * L
    bs = int(min(r_max * base, n - w))
    cand = []  # per layer: list over heads of [(score, pos)]
    kept = []
    for layer, s in enumerate(scores):
        heads = []
        for h in range(HKV):
            top = top_positions(s[h], bs)
            heads.append([(float(s[h, p]), p) for p in top])
        cand.append(heads)
        kept.append(bs)
        if (layer + 1) % m == 0 or layer == L - 1:
            allv = [(sc, j) for j in range(layer + 1) for h in range(HKV) for sc, _ in cand[j][h]]
            allv.sort(key=lambda t: -t[0])
            chosen = allv[: base * (layer + 1) * HKV]
            counts = [sum(1 for _, j in chosen if j == jj) / HKV for jj in range(layer + 1)]
            # scale to G, cap at what a layer holds, redistribute, largest remainder
            caps = kept[: layer + 1]
            fixed = {}
            while True:
                free = [j for j in range(layer + 1) if j not in fixed]
                rem = min(G, sum(caps)) - sum(fixed.values())
                tot = sum(counts[j] for j in free) or len(free)
                share = {j: (counts[j] if sum(counts[j] for j in free) else 1) * rem / tot for j in free}
                over = [j for j in free if share[j] > caps[j]]
                if not over:
                    break
                for j in over:
                    fixed[j] = caps[j]
            alloc = dict(fixed)
            floors = {j: math.floor(share[j]) for j in free}
            missing = min(G, sum(caps)) - sum(fixed.values()) - sum(floors.values())
            order = sorted(free, key=lambda j: (-(share[j] - floors[j]), j))
            for j in order[:missing]:
                floors[j] += 1
            alloc.update(floors)
            for j in range(layer + 1):
                if alloc[j] < kept[j]:
                    for h in range(HKV):
                        best = sorted(cand[j][h], key=lambda t: -t[0])[: alloc[j]]
                        cand[j][h] = sorted(best, key=lambda t: t[1])
                    kept[j] = alloc[j]
    return [[sorted(p for _, p in cand[j][h]) + list(range(n - w, n)) for h in range(HKV)] for j in range(L)]


@pytest.mark.parametrize("n,budget,L,m", [(300, 40, 8, 4), (200, 20, 5, 2), (500, 64, 6, 3)])
def test_dynamickv_matches_reference(n, budget, L, m):
    obs = make_obs(n, L, queries=8, seed=n)
    for o in obs:  # identical rows so that row 0's reference is every row's
        o.queries[1] = o.queries[0]
        o.keys[1] = o.keys[0]
    kept, method = run_method(get_method("dynamickv", update_every=m, allocation="candidates"), obs, budget)
    ref = reference_dynamickv(obs, budget, m=m)
    for j in range(L):
        for h in range(HKV):
            assert kept[j][0, h].tolist() == ref[j][h], (j, h)
            assert kept[j][1, h].tolist() == ref[j][h]
    assert sum(k.shape[-1] - 8 for k in kept) == (budget - 8) * L


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_window_sorted_unique(name):
    obs = make_obs(300, 4, queries=64)
    method = get_method(name)
    kept, m = run_method(method, obs, 96)
    w = m.observation_queries if name == "windowkv" else m.window
    for k in kept:
        for b in range(B):
            for h in range(HKV):
                row = per_head_lists(k)[b][h]
                assert row == sorted(set(row)), "kept positions are sorted and unique"
                if w:
                    assert row[-w:] == list(range(300 - w, 300))
    total = sum(sum(len(p) for p in per_head_lists(k)[0]) / HKV for k in kept)
    if name == "fullkv":
        assert total == 300 * 4
    elif name == "windowkv":
        assert total <= 96 * 4
    else:
        assert total == 96 * 4


@pytest.mark.parametrize("name", list(METHODS))
def test_short_prompt_kept_whole(name):
    obs = make_obs(40, 3, queries=40)
    kept, _ = run_method(get_method(name), obs, 64)
    assert all(len(p) == 40 for k in kept for row in per_head_lists(k) for p in row)


@pytest.mark.parametrize("name", [n for n in METHODS if n != "fullkv"])
def test_padding_never_selected(name):
    n, pad = 200, 30
    valid = torch.ones(B, n, dtype=torch.bool)
    valid[1, :pad] = False
    obs = make_obs(n, 4, queries=64, valid=valid)
    kept, _ = run_method(get_method(name), obs, 64, valid=valid, n_eff=n - pad)
    for k in kept:
        assert all(p >= pad for head in per_head_lists(k)[1] for p in head)
    for b in range(B):  # every row within its budget
        assert sum(sum(len(p) for p in per_head_lists(k)[b]) for k in kept) <= 64 * 4 * HKV

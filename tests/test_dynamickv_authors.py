"""DynamicKV's ``allocation="authors"`` keeps exactly what the authors' released code keeps.

``authors_update`` below is our own transcription of ``DynamicKVClusterV11`` (DreamMr/DynamicKV,
``kv_compression/token_drop/methods/dynamic_v11.py``: ``budget_compute_per_layer`` and
``update_and_reset_budget``, driven as ``llama_model_impl/dynamickv_v11.py`` drives them), written
from that code, not from ours, with the fixes ``docs/methods.md`` documents applied:

* a layer is never cut to more than it holds (their slice ``k_cache[:, :, :fix_length]`` then runs
  into the window and duplicates it): the excess goes to the other layers in proportion, so the
  budget adds up;
* a re-allocation also runs after the last layer when ``L`` is not a multiple of ``m`` (theirs only
  after layers with ``l % 4 == 3``), and ``m`` is a parameter.

With one query head per KV head (their code repeats K/V to every query head) the kept positions
must be identical. One remaining deviation: ``torch.topk`` breaks ties in an unspecified order, and max
pooling makes exact ties common (plateaus), so both sides break ties towards the lower index (a stable
sort), which makes the selection deterministic and reproducible on any device.
"""

from __future__ import annotations

import math

import pytest
import torch

from dynamickv.methods import get_method
from dynamickv.scoring import Observation
from reference import attention_rows, pool, token_scores
from test_methods_reference import run_method

B, H, D = 2, 3, 8


def topk(x, k):
    """``torch.topk`` with ties to the lower index (see the module docstring)."""
    return torch.sort(x, descending=True, stable=True)[1][:k]


def water_fill(budgets, caps):
    """The fix for shares above what a layer holds, written plainly: cap those layers, give the excess
    to the others in proportion to their budgets (repeat while one overflows), round by the largest
    remainder (ties to the lower layer) so the total is kept."""
    total = min(sum(budgets), sum(caps))
    fixed = {}
    while True:
        free = [j for j in range(len(budgets)) if j not in fixed]
        left = total - sum(fixed.values())
        weight = sum(budgets[j] for j in free)
        share = {j: (budgets[j] if weight else 1) * left / (weight or len(free)) for j in free}
        over = [j for j in free if share[j] > caps[j]]
        if not over:
            break
        fixed.update({j: caps[j] for j in over})
    out = dict(fixed)
    floors = {j: int(share[j]) for j in free}
    missing = left - sum(floors.values())
    for j in sorted(free, key=lambda j: (-(share[j] - floors[j]), j))[:missing]:
        floors[j] += 1
    out.update(floors)
    return [out[j] for j in range(len(budgets))]


def authors_update(scores, n, budget, window=8, r_max=10, m=4):
    """Transcription, for one batch row. ``scores``: per layer ``[heads, n - window]`` pooled."""
    L = len(scores)
    heads = scores[0].shape[0]
    base = budget - window
    budget_size = min(int(r_max * base), n - window)
    held = []  # per layer: per head, candidate positions in descending score order
    advance = []  # per layer: all pooled scores (never truncated)
    for layer, s in enumerate(scores):
        held.append([topk(s[h], budget_size).tolist() for h in range(heads)])
        advance.append(s)
        if layer % m != m - 1 and layer != L - 1:
            continue
        gather = torch.stack(advance)  # [layers, heads, n - window]
        tk = base * heads * gather.shape[0]
        top = topk(gather.reshape(-1), min(tk, gather.numel()))
        dim1 = gather.shape[1] * gather.shape[2]
        counts = torch.zeros(gather.shape[0], dtype=torch.long)
        counts.scatter_add_(0, top // dim1, torch.ones_like(top))
        counts = counts // gather.shape[0]
        if layer == L - 1:
            counts[-1] += tk // L - counts.sum()
        norm = [t / torch.sum(counts).item() for t in counts]
        fix = [int((budget_size * t).item()) for t in norm]
        ss = sum(fix) / (base * L)
        fix = [int(k // ss) for k in fix]
        if sum(fix) != base * L:
            fix[-1] += base * L - sum(fix)
        fix = [min(f, n - window) for f in fix]
        fix = water_fill(fix, [len(h[0]) for h in held])  # the fix: never past what is held
        for j in range(len(held)):
            held[j] = [cand[: fix[j]] for cand in held[j]]
    return [[sorted(c) + list(range(n - window, n)) for c in layer] for layer in held]


def observations(n, layers, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(layers):
        q = torch.randn(B, H, 8, D, generator=g) * 2
        k = torch.randn(B, H, n, D, generator=g) * 2
        k[1], q[1] = k[0], q[0]  # identical rows: the shared allocation is row 0's
        out.append(Observation(q, k, 1 / math.sqrt(D), None, layer))
    return out


def pooled(obs, window, kernel, mode):
    rows = attention_rows(obs.queries[..., -window:, :], obs.keys, obs.scaling)
    return pool(token_scores(rows, window, H)[..., : obs.n - window], kernel, mode)[0].float()


@pytest.mark.parametrize(
    "n,budget,L,m,mode",
    [(300, 40, 8, 4, "avg"), (257, 24, 6, 4, "max"), (500, 64, 9, 4, "avg"), (200, 20, 5, 2, "avg")],
)
def test_authors_rule_matches_their_update(n, budget, L, m, mode):
    obs = observations(n, L, seed=n + L)
    method = get_method("dynamickv", update_every=m, pooling=mode)
    kept, method = run_method(method, obs, budget)
    ref = authors_update([pooled(o, 8, 7, mode) for o in obs], n, budget, m=m)
    for j in range(L):
        for h in range(H):
            assert kept[j][0, h].tolist() == ref[j][h], (j, h)
            assert kept[j][1, h].tolist() == ref[j][h]


def test_the_two_rules_differ():
    """The authors' rule counts every pooled score, ours the held candidates: not the same layers."""
    obs = observations(400, 8, seed=5)
    a, _ = run_method(get_method("dynamickv"), obs, 40)
    c, _ = run_method(get_method("dynamickv", allocation="candidates"), obs, 40)
    assert [k.shape[-1] for k in a] != [k.shape[-1] for k in c]

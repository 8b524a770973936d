"""Head-adaptive budgets (Ada-KV): kept positions equal a plain reference, counts sum to the layer
budget, B >= n equals uncompressed, the cache holds only what is kept, and the CLI marks the methods."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import cache_bytes, compressed_layers, kept_tokens_per_layer_head
from dynamickv.errors import BudgetError
from dynamickv.heads import adaptive_head_counts, shrink_candidates
from dynamickv.methods import PrefillInfo, SnapKV, describe_methods, get_method
from dynamickv.methods.base import select_top
from dynamickv.ragged import RaggedLayer
from dynamickv.scoring import Observation
from dynamickv.selection import Selection
from reference import attention_rows, pool, token_scores, top_positions
from tiny import one_thread, tiny_model

BATCH, HQ, HKV, D = 2, 8, 4, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def make_obs(n: int, layers: int, queries: int = 32, seed: int = 0) -> list[Observation]:
    g = torch.Generator().manual_seed(seed)
    return [
        Observation(
            torch.randn(BATCH, HQ, queries, D, generator=g) * 2,
            torch.randn(BATCH, HKV, n, D, generator=g) * 2,
            1 / math.sqrt(D),
            None,
            layer,
        )
        for layer in range(layers)
    ]


def kept_lists(method, observations, budget: int) -> list[list[list[list[int]]]]:
    """Per layer ``[row][head] -> positions`` after the method's keep operations."""
    n = observations[0].n
    info = PrefillInfo(n=n, n_eff=n, num_layers=len(observations), budget=budget)
    method.begin(info)
    out = {}
    for layer, obs in enumerate(observations):
        for j, idx in method.compress(layer, obs.last(method.observation_queries)):
            assert j == layer
            if idx is None:
                out[j] = [[list(range(n))] * HKV for _ in range(BATCH)]
            elif isinstance(idx, Selection):
                out[j] = [
                    [idx.index[b, h, : idx.counts[b, h]].tolist() for h in range(HKV)] for b in range(BATCH)
                ]
            else:
                out[j] = [[idx[b, h].tolist() for h in range(HKV)] for b in range(BATCH)]
    return [out[j] for j in range(len(observations))]


def reference_head_counts(scores: list[list[float]], base: int, alpha: float) -> list[int]:
    """Ada-KV's rule written plainly for one row: one top-(H * base) over every head's scores (ties to
    the lower head, then position), a floor of floor(alpha * base) per head, the rest in proportion to
    the top-k counts, rounded by the largest remainder in exact fractions."""
    h = len(scores)
    flat = [(s, head, j) for head in range(h) for j, s in enumerate(scores[head])]
    flat.sort(key=lambda t: -t[0])  # stable: equal scores keep (head, position) order
    hits = [0] * h
    for _, head, _ in flat[: h * base]:
        hits[head] += 1
    floor = math.floor(alpha * base + 1e-9)
    pool_ = h * base - h * floor
    shares = [Fraction(hits[i] * pool_, h * base) for i in range(h)]
    whole = [math.floor(s) for s in shares]
    order = sorted(range(h), key=lambda i: (-(shares[i] - whole[i]), i))
    for i in order[: pool_ - sum(whole)]:
        whole[i] += 1
    return [floor + w for w in whole]


def reference_kept(obs: Observation, budget: int, window: int, kernel: int, mode: str, alpha: float):
    rows = attention_rows(obs.queries[..., -window:, :], obs.keys, obs.scaling)
    scores = pool(token_scores(rows, window, HKV)[..., : obs.n - window], kernel, mode)
    out = []
    for b in range(BATCH):
        per_head = [[float(v) for v in scores[b, h]] for h in range(HKV)]
        counts = reference_head_counts(per_head, budget - window, alpha)
        out.append(
            [top_positions(scores[b, h], counts[h]) + list(range(obs.n - window, obs.n)) for h in range(HKV)]
        )
    return out


@pytest.mark.parametrize(
    "spec,kernel,mode",
    [
        ("adakv:window=8", 7, "max"),
        ("snapkv:window=8;heads=adaptive;head_floor=0.5", 7, "max"),
        ("h2o:window=8;heads=adaptive", 1, "none"),
        ("pyramidkv:heads=adaptive;head_floor=0", 7, "max"),
    ],
)
def test_per_head_positions_match_plain_reference(spec, kernel, mode):
    """Explicit attention, an explicit top-k over all of a layer's heads, explicit per-head sorting."""
    method = get_method(spec)
    obs = make_obs(n=90, layers=3, queries=8, seed=5)
    kept = kept_lists(method, obs, budget=30)
    budgets = method.budgets()
    for layer, o in enumerate(obs):
        expect = reference_kept(o, budgets[layer], method.window, kernel, mode, method.head_floor)
        assert kept[layer] == expect, (spec, layer)
    counts = [[len(p) for p in kept[layer][0]] for layer in range(3)]
    assert any(len(set(c)) > 1 for c in counts)  # the heads really got different budgets


@pytest.mark.parametrize("n,budget,alpha", [(60, 20, 0.2), (300, 64, 0.0), (300, 64, 1.0), (129, 128, 0.2)])
@pytest.mark.parametrize("name", ["adakv", "h2o", "pyramidkv"])
def test_counts_sum_to_the_layer_budget(n, budget, alpha, name):
    method = get_method(name, window=8, heads="adaptive", head_floor=alpha)
    kept = kept_lists(method, make_obs(n, 4, queries=8, seed=n), budget)
    for layer, budget_l in enumerate(method.budgets()):
        for b in range(BATCH):
            sizes = [len(p) for p in kept[layer][b]]
            assert sum(sizes) == HKV * budget_l  # exact: the layer budget, window included
            base = budget_l - 8
            assert min(sizes) >= 8 + math.floor(alpha * base + 1e-9) and max(sizes) <= n
            if alpha == 1.0:
                assert sizes == [budget_l] * HKV  # a floor of 1 is the uniform split


def test_floor_one_equals_uniform_selection():
    obs = make_obs(150, 2, queries=8, seed=3)
    uniform = kept_lists(get_method("snapkv", window=8), obs, 40)
    full_floor = kept_lists(get_method("adakv", window=8, head_floor=1.0), obs, 40)
    assert uniform == full_floor


def test_heads_never_get_more_than_they_hold():
    """Candidates of different lengths (``-inf`` beyond): counts are cut to what a head has and the
    excess goes to the others, the sum unchanged."""
    scores = torch.tensor([[[9.0, 8.0, -math.inf, -math.inf], [1.0, 1.0, 1.0, 1.0]]])
    counts = adaptive_head_counts(scores, torch.tensor([3]), alpha=0.5)
    assert counts.tolist() == [[2, 4]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("spec", ["adakv", "pyramidkv:heads=adaptive", "h2o:heads=adaptive"])
def test_budget_at_least_prompt_equals_uncompressed(attn, spec):
    model = tiny_model("llama", attn, seed=1)
    ids = torch.randint(3, 256, (2, 150), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ref = model.generate(ids, **kw)
    with compress(model, spec, 150):
        out = model.generate(ids, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.scores), torch.stack(ref.scores), atol=1e-5, rtol=1e-5)


def test_ragged_cache_holds_exactly_the_kept_tokens():
    """The bytes held are the kept counts times head_dim x 2 x dtype size, before and after decoding."""
    model = tiny_model("llama", seed=1)
    ids = torch.randint(3, 256, (2, 200), generator=torch.Generator().manual_seed(4))
    with compress(model, "adakv", 48, window=8) as comp:
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    layers = compressed_layers(cache)
    assert all(isinstance(layer, RaggedLayer) for layer in layers.values())
    d, size = model.config.head_dim, 4
    kept = sum(int(layer.kept_counts().sum()) for layer in layers.values())
    assert kept == 48 * 2 * 2 * len(layers)  # rows x KV heads x layers x B
    assert cache_bytes(cache) == kept * d * 2 * size
    assert comp.stats.padding_tokens == 0 and comp.stats.rectangular_padding_tokens > 0
    per_head = kept_tokens_per_layer_head(cache)
    assert per_head == comp.stats.kept_tokens_per_layer_head
    assert all(sum(h) == 2 * 2 * 48 for h in per_head) and any(len(set(h)) > 1 for h in per_head)
    token = out.logits[:, -1:].argmax(-1)
    with compress(model, "fullkv", 1):
        for _ in range(3):
            token = model(input_ids=token, past_key_values=cache, use_cache=True).logits.argmax(-1)
    generated = 3 * 2 * 2 * len(layers)  # steps x rows x KV heads x layers
    assert cache_bytes(cache) == (kept + generated) * d * 2 * size


def test_static_decode_equals_eager_on_ragged_cache():
    """Eager decoding of a head-adaptive cache equals the static decoder reading it."""
    from dynamickv.fast import StaticDecoder

    model = tiny_model("llama", seed=1)
    ids = torch.randint(3, 256, (2, 180), generator=torch.Generator().manual_seed(7))
    with compress(model, "adakv", 48, window=8):
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)[:, 180:]
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    with compress(model, "snapkv", 48, window=8):
        uniform = model.generate(ids, max_new_tokens=12, do_sample=False)[:, 180:]
    assert not torch.equal(ref, uniform)  # the head split changes the answer: equality is informative
    first = out.logits[:, -1].argmax(-1)
    decoder = StaticDecoder(model, out.past_key_values, max_new_tokens=12, graph=False)
    assert torch.equal(decoder.generate(first, 12), ref)


def test_methods_json_marks_head_adaptive_methods():
    """Through the real entry point, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-c", "from dynamickv.cli import main; main()", "methods", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows == {r["name"]: r for r in describe_methods()}
    assert rows["adakv"]["head_adaptive"] is True and rows["adakv"]["params"]["head_floor"] == 0.2
    assert rows["snapkv"]["head_adaptive"] is False and rows["snapkv"]["head_adaptive_option"] is True
    assert rows["streamingllm"]["head_adaptive_option"] is False


@pytest.mark.parametrize(
    "spec,message",
    [
        ("streamingllm:heads=adaptive", "unknown parameter 'heads'"),
        ("snapkv:heads=sideways", "is not 'uniform' or 'adaptive'"),
        ("adakv:head_floor=1.5", "head_floor must be in"),
        ("adakv:head_floor=nan", "not a finite number"),
    ],
)
def test_bad_head_specs_are_errors(spec, message):
    with pytest.raises(BudgetError, match=message):
        get_method(spec)


def test_bad_head_spec_is_one_line_through_the_cli(tmp_path):
    """Before any model loads: exit 2, one ``error:`` line, no traceback."""
    ctx = tmp_path / "c.txt"
    ctx.write_text("some context")
    cmd = ["generate", "-c", str(ctx), "-q", "q?", "--method", "snapkv:heads=sideways"]
    proc = subprocess.run(
        [sys.executable, "-c", "from dynamickv.cli import main; main()", *cmd],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "is not 'uniform' or 'adaptive'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


class _TwoStage(SnapKV):
    """Test-only, DynamicKV-like: a head-adaptive keep of twice the budget, then a shrink of the
    (now ragged) layer to the budget with :func:`shrink_candidates`, as a re-allocation would."""

    name = "two-stage-test"

    def compress(self, layer, obs):
        info = self._require_info()
        w, budget = self.window, self._budgets[layer]
        first = select_top(self.score, obs, 2 * budget - w, w, info, self.head_floor)
        held = first.counts - w
        cmax = int(held.max())
        scores = self.score(obs)
        cand = scores.gather(-1, first.index[..., :cmax].clamp_max(scores.shape[-1] - 1))
        cand = torch.where(torch.arange(cmax) < held.unsqueeze(-1), cand, float("-inf"))
        keep, _ = shrink_candidates(cand, budget - w, w, self.head_floor)
        self.trace[layer] = (first, cand, keep)
        return [(layer, first), (layer, keep)]


def test_shrinking_a_ragged_layer_keeps_each_heads_best_candidates():
    model = tiny_model("llama", seed=1)
    ids = torch.randint(3, 256, (1, 160), generator=torch.Generator().manual_seed(9))
    method = _TwoStage(window=8, heads="adaptive")
    method.trace = {}
    with compress(model, method, 40) as comp:
        cache = model(input_ids=ids, use_cache=True).past_key_values
    for layer_idx, layer in compressed_layers(cache).items():
        first, cand, keep = method.trace[layer_idx]
        assert isinstance(first, Selection) and isinstance(layer, RaggedLayer)
        kept = layer.kept_positions(0)
        assert sum(len(p) for p in kept) == 40 * 2  # the layer budget, two KV heads
        for h in range(2):
            n_cand = int(first.counts[0, h]) - 8
            positions = first.index[0, h, :n_cand].tolist()
            ranked = sorted(range(n_cand), key=lambda i: -float(cand[0, h, i]))  # stable: ties to earlier
            count = len(kept[h]) - 8
            assert kept[h] == sorted(positions[i] for i in ranked[:count]) + list(range(152, 160))
    assert comp.stats.kept_per_layer == [40] * 8 and comp.stats.padding_tokens == 0

"""Tiny random-weight models of every supported family: equivalence, reference selection, GQA, padding."""

from __future__ import annotations

import pytest
import torch

from dynamickv import Compressor, UnsupportedModelError, cache_bytes, compress
from dynamickv.cache import compressed_layers
from dynamickv.methods import METHODS
from dynamickv.replay import derive_cache, record_prefill
from reference import pool, token_scores, top_positions
from test_methods_reference import reference_dynamickv_from_scores
from tiny import FAMILIES, tiny_model

N = 160


def prompt(batch=1, n=N, seed=1):
    return torch.randint(3, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generation_equivalence_when_budget_covers_prompt(family, attn):
    model = tiny_model(family, attn)
    ids = prompt()
    ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    for name in METHODS:
        with compress(model, name, N):
            out = model.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(out, ref), name
    assert model.config._attn_implementation == attn  # restored on exit


def _reference_scores(model, ids, window, kernel, mode):
    """Per compressed layer: pooled scores from the model's own eager attention matrices."""
    model.config._attn_implementation = "eager"
    out = model(ids, output_attentions=True)
    hkv = model.config.num_key_value_heads
    return [
        pool(token_scores(a.double(), window, hkv)[0][:, : ids.shape[1] - window], kernel, mode)
        for a in out.attentions
    ]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kept_tokens_match_model_attention(family):
    model = tiny_model(family, "eager")
    ids = prompt()
    layers = Compressor(model, "snapkv", 64).layers
    # SnapKV: top tokens per KV head of max-pooled attention of the last 32 queries, plus the window
    scores = _reference_scores(model, ids, 32, 7, "max")
    with compress(model, "snapkv", 64):
        cache = model(ids, use_cache=True).past_key_values
    for i in layers:
        pos = cache.layers[i].positions[0]
        assert pos.shape[0] == model.config.num_key_value_heads  # GQA-native: one row per KV head
        for h in range(pos.shape[0]):
            assert pos[h].tolist() == top_positions(scores[i][h], 32) + list(range(N - 32, N))
    # DynamicKV: the progressive re-allocation over the compressed layers
    scores = _reference_scores(model, ids, 8, 7, "avg")
    with compress(model, "dynamickv", 24, allocation="candidates"):
        cache = model(ids, use_cache=True).past_key_values
    ref = reference_dynamickv_from_scores([scores[i] for i in layers], N, 24)
    for j, i in enumerate(layers):
        assert cache.layers[i].positions[0].tolist() == ref[j]


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_cache_is_real_and_gqa_native(family):
    model = tiny_model(family)
    ids = prompt()
    with compress(model, "dynamickv", 32) as c:
        out = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    comp = compressed_layers(cache)
    assert list(comp) == c.stats.compressed_layers
    for layer in comp.values():
        assert layer.keys.shape[1] == model.config.num_key_value_heads
        assert layer.keys.shape[2] == layer.prompt_kept + 2  # kept prompt + generated tokens in cache
    assert sum(layer.prompt_kept for layer in comp.values()) == 32 * len(comp)
    full = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert cache_bytes(cache) < cache_bytes(full.past_key_values)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("name", ["snapkv", "dynamickv", "windowkv", "streamingllm"])
def test_padded_batch_rows_select_their_own_tokens(family, name):
    model = tiny_model(family)
    long_ids, short_ids = prompt(n=N, seed=2), prompt(n=N - 40, seed=3)
    pad = torch.full((1, 40), 0)
    ids = torch.cat([long_ids, torch.cat([pad, short_ids], 1)], 0)
    mask = torch.ones_like(ids)
    mask[1, :40] = 0
    with compress(model, name, 64, **({"mode": "localization"} if name == "windowkv" else {})):
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True
        )
        cache = out.past_key_values
        singles = []
        for row in (long_ids, short_ids):
            singles.append(
                model.generate(row, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
            )
    layers = compressed_layers(cache)
    assert any(x.kept_positions(0) != x.kept_positions(1) for x in layers.values())  # own choices
    for i, layer in layers.items():
        assert all(p >= 40 for head in layer.kept_positions(1) for p in head)  # padding is never kept
        if name == "dynamickv":
            continue  # its allocation is shared by the whole batch: rows differ from solo runs
        solo_long = singles[0].past_key_values.layers[i].kept_positions(0)
        solo_short = [[p + 40 for p in h] for h in singles[1].past_key_values.layers[i].kept_positions(0)]
        assert layer.kept_positions(0) == solo_long
        assert layer.kept_positions(1) == solo_short
    if name != "dynamickv":
        assert torch.equal(out.sequences[0, -4:], singles[0].sequences[0, -4:])
        assert torch.equal(out.sequences[1, -4:], singles[1].sequences[0, -4:])


def test_right_padding_is_rejected():
    model = tiny_model("llama")
    ids = prompt(batch=2)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    from dynamickv import InputError

    with compress(model, "snapkv", 64), pytest.raises(InputError, match="left padding"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "family,overrides", [("llama", {}), ("gemma3", {}), ("mistral", {"sliding_window": 48})]
)
def test_replay_equals_live_compression(family, overrides):
    """Deriving a configuration from one recorded prefill equals compressing live, on sliding layers
    too (the record keeps the whole prompt; a ratio budget is a share of the prompt, not of the window:
    0.12 of 300 is 36, of the 47 visible tokens it would be below SnapKV's window and refused)."""
    model = tiny_model(family, **overrides)
    ids = prompt(n=300)
    record = record_prefill(model, ids)
    for name in METHODS:
        sliding_heads = "sliding_window" in overrides and getattr(METHODS[name](), "heads", "") == "adaptive"
        for budget in (40, 100, "0.12"):
            if sliding_heads and budget != 100:  # refused in one line (tests/test_sliding.py)
                continue
            cache, _ = derive_cache(record, name, budget)
            with compress(model, name, budget):
                live = model(input_ids=ids, use_cache=True).past_key_values
            a, b = compressed_layers(live), compressed_layers(cache)
            assert a.keys() == b.keys()
            for i in a:
                assert torch.equal(a[i].positions, b[i].positions)
                assert torch.equal(a[i].keys, b[i].keys) and torch.equal(a[i].values, b[i].values)
                assert a[i].sliding_window == b[i].sliding_window == overrides.get("sliding_window")


def test_unsupported_architecture_and_attention():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        Compressor(gpt2, "snapkv", 64)
    model = tiny_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedModelError, match="sdpa"):
        Compressor(model, "snapkv", 64)

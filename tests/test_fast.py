"""The fast path: static-cache decoding equals eager decoding; chunked prefill changes nothing."""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import compressed_layers
from dynamickv.fast import StaticDecoder, chunked_prefill
from tiny import tiny_model


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3", "gemma3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["dynamickv", "pyramidkv", "snapkv"])
def test_static_decode_equals_eager_decode(family, attn, method):
    model = tiny_model(family, attn)
    rows = 1 if family == "gemma3" else 2  # uncompressed sliding layers: one request per cache
    ids = torch.randint(3, 256, (rows, 180), generator=torch.Generator().manual_seed(7))
    with compress(model, method, 48):
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)[:, 180:]
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].argmax(-1)
    tokens = StaticDecoder(model, out.past_key_values, max_new_tokens=12, graph=False).generate(first, 12)
    assert torch.equal(tokens, ref)


def test_chunked_prefill_is_exact_and_restores_modules():
    model = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 300), generator=torch.Generator().manual_seed(1))
    with compress(model, "dynamickv", 64):
        plain = model(input_ids=ids, use_cache=True)
        with chunked_prefill(model, chunk=64):
            chunked = model(input_ids=ids, use_cache=True)
    torch.testing.assert_close(plain.logits, chunked.logits, atol=1e-5, rtol=1e-5)
    for i, layer in compressed_layers(plain.past_key_values).items():
        assert torch.equal(layer.positions, chunked.past_key_values.layers[i].positions)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_bench_runs_on_cpu_tiny(tmp_path):
    from dynamickv.bench import run_bench

    out = tmp_path / "bench.json"
    result = run_bench("tiny", ["fullkv", "dynamickv"], 32, [128], "cpu", steps=2, out=out)
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["fullkv", "dynamickv"] and out.exists()
    dyn = result["rows"][1]
    assert dyn["kept_mean"] == 32 and dyn["cache_bytes"] < result["rows"][0]["cache_bytes"]
    assert dyn["decode_static_ms"] > 0 and dyn["prefill_s"] > 0
    # what a CPU run cannot measure is null, never 0.0 or NaN (strict JSON)
    import json

    saved = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert saved["meta"]["copy_bandwidth_gbs"] is None
    assert all(r["prefill_peak_gib"] is None and "floor_ms" not in r for r in saved["rows"])

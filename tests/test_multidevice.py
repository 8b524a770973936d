"""Layers split over devices (``device_map``): compression and the static decoder still work.

Needs a CUDA device: the layers alternate between ``cuda:0`` and ``cuda:1`` when there are two GPUs,
else between ``cuda:0`` and the CPU, so every layer boundary crosses devices. The split model must
keep exactly the tokens, and generate exactly the answer, of the same model on one device.
Skipped on machines without CUDA (CI); run on a GPU host with ``pytest tests/test_multidevice.py``.
"""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import compressed_layers, output_cache
from dynamickv.fast import StaticDecoder
from dynamickv.methods import METHODS
from tiny import tiny_model

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("exact_fp32"),
]


def _devices() -> tuple[str, str]:
    return ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cuda:0", "cpu")


def _split(model: torch.nn.Module) -> torch.nn.Module:
    accelerate = pytest.importorskip("accelerate")
    a, b = _devices()
    device_map = {"model.embed_tokens": a, "model.rotary_emb": a, "model.norm": b, "lm_head": b}
    for i in range(model.config.num_hidden_layers):
        device_map[f"model.layers.{i}"] = a if i % 2 == 0 else b
    # main_device="cpu": CPU layers run on the CPU (otherwise accelerate offloads them and runs them on GPU)
    return accelerate.dispatch_model(model, device_map=device_map, main_device="cpu" if b == "cpu" else a)


def _run(model: torch.nn.Module, method: str, ids: torch.Tensor, new: int):
    with compress(model, method, 48):
        generated = model.generate(ids, max_new_tokens=new, do_sample=False)[:, ids.shape[-1] :]
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    positions = {i: layer.positions.cpu() for i, layer in compressed_layers(cache).items()}
    return generated.cpu(), positions, cache, out.logits[:, -1]


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_split_layers_match_one_device(family, method):
    first = _devices()[0]
    one = tiny_model(family).to(first)
    split = _split(tiny_model(family))
    devices = {p.device for p in split.model.layers.parameters()}
    assert devices == {torch.device(d) for d in _devices()}  # really on both, nothing offloaded
    ids = torch.randint(3, 256, (1, 300), generator=torch.Generator().manual_seed(3)).to(first)

    ref_tokens, ref_pos, _, _ = _run(one, method, ids, 10)
    tokens, pos, cache, logits = _run(split, method, ids, 10)
    assert pos.keys() == ref_pos.keys()
    for i in ref_pos:
        assert torch.equal(pos[i], ref_pos[i]), f"layer {i} kept other tokens"
    assert torch.equal(tokens, ref_tokens)
    # each layer's compressed cache stays on that layer's device
    for i, layer in compressed_layers(cache).items():
        assert layer.keys.device == next(split.model.layers[i].parameters()).device

    # the static decoder (no CUDA graph across devices) gives the same answer
    decoder = StaticDecoder(split, cache, max_new_tokens=10)
    assert not decoder.graph_on
    static = decoder.generate(logits.argmax(-1), 10)
    assert torch.equal(static.cpu(), tokens)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_bench_spreads_the_layers_over_every_gpu(tmp_path):
    """``dynamickv bench --device auto`` on several GPUs: a random-weight model built layer by layer
    on its own GPU, measured on all of them (memory summed, every GPU synchronised), decoded by the
    static decoder without a CUDA graph."""
    pytest.importorskip("accelerate")
    from dynamickv.bench import run_bench

    result = run_bench("tiny", ["fullkv", "snapkv"], 64, [1024], "auto", steps=8, out=tmp_path / "b.json")
    gpus = min(torch.cuda.device_count(), 4)  # the tiny shape has 4 layers
    assert result["meta"]["devices"] == [f"cuda:{i}" for i in range(gpus)]
    rows = {r["method"]: r for r in result["rows"]}
    assert not any(r.get("oom") for r in rows.values())
    assert rows["snapkv"]["kept_mean"] == 64 and rows["snapkv"]["decode_static_ms"] > 0
    assert rows["fullkv"]["prefill_peak_gib"] > 0
    assert rows["snapkv"]["cache_bytes"] < rows["fullkv"]["cache_bytes"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_graph_decoding_on_a_gpu_that_is_not_the_current_one():
    """A decoder on ``cuda:1`` while ``cuda:0`` is current (a torchrun rank before 2026-11-30):
    the graph used to be captured empty on the current GPU, and its replays decoded nothing."""
    torch.cuda.set_device(0)
    ids = torch.randint(3, 256, (1, 300), generator=torch.Generator().manual_seed(5))
    outs = []
    for device in ("cuda:0", "cuda:1"):
        model = tiny_model("llama").to(device)
        with compress(model, "snapkv", 48):
            out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
        decoder = StaticDecoder(model, output_cache(out), 12, graph=True)
        assert decoder.graph_on and torch.cuda.current_device() == 0
        outs.append(decoder.generate(out.logits[:, -1].argmax(-1), 12).cpu())
        with compress(model, "snapkv", 48):
            ref = model.generate(ids.to(device), max_new_tokens=13, do_sample=False)[:, ids.shape[-1] :]
        assert torch.equal(outs[-1], ref[:, :12].cpu())  # 12 tokens after the prefill's own
    assert torch.equal(outs[0], outs[1])

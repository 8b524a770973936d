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

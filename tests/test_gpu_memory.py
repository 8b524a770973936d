"""GPU memory the decoders must not keep: the weight fusion's stranded blocks and a cuBLAS
workspace per decoder (both found on the Llama-3.1-70B shape, ``docs/benchmarks.md`` 2026-12-01).

The two CUDA tests are skipped without a GPU; the stream cache is checked everywhere."""

from __future__ import annotations

import gc

import pytest
import torch

from dynamickv import batch_decoder, compress
from dynamickv.batch_decoder import BatchDecoder, capture_stream
from dynamickv.cache import output_cache
from dynamickv.decode_step import layer_weights
from tiny import tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_capture_stream_is_made_once_per_gpu(monkeypatch):
    made = []
    monkeypatch.setattr(batch_decoder, "_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or object())
    first, second = torch.device("cuda", 0), torch.device("cuda", 1)
    a, b, c = capture_stream(first), capture_stream(first), capture_stream(second)
    assert a is b and a is not c
    assert made == [first, second]


def _held() -> tuple[int, int]:
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


@cuda
def test_fusing_weights_leaves_nothing_reserved_that_cannot_be_handed_back():
    """Each layer's freed gate weight (64 MiB here, 448 MiB on the 70B shape) is larger than the next
    layer's new q/k/v buffer (48 MiB): carved out of it, the rest of the block stays reserved for good.

    On an H200 (2026-12-01) this model kept 130 MiB reserved that way without the fix and 18 MiB with
    it (one of the allocator's 20 MiB segments for small tensors, partly used)."""
    torch.cuda.empty_cache()
    model = tiny_model(
        "llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=128,
        num_hidden_layers=8,
    ).to("cuda")
    layer_weights(model, fuse=True)
    allocated, reserved = _held()
    assert reserved - allocated < 40 * 2**20, (allocated, reserved)


@cuda
@pytest.mark.usefixtures("exact_fp32")
def test_decoders_leave_no_memory_behind():
    """A new side stream per decoder kept one cuBLAS workspace each for the life of the process."""
    model = tiny_model("llama").to("cuda")
    ids = torch.randint(3, 256, (1, 120), device="cuda")
    with compress(model, "snapkv:window=8", 24):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, first = output_cache(out), out.logits[:, -1].argmax(-1)
    held = []
    for _ in range(3):
        decoder = BatchDecoder(model, rows=1, max_new_tokens=8, graph=True, mode="fused")
        decoder.add(cache, first)
        decoder.run()
        del decoder
        held.append(_held()[0])
    assert held[1] == held[2] == held[0], held

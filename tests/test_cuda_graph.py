"""The static decoders' CUDA-graph step equals the same step run eagerly, and ``generate``.

Needs a CUDA device (skipped in CI); run on a GPU host with ``pytest tests/test_cuda_graph.py``.
The sliding models are the cases to watch: their window mask is updated inside the captured step, and
Gemma 3's forward builds two kinds of attention masks, either of which could sync with the host and
break the capture.
"""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.batch_decoder import BatchDecoder
from dynamickv.cache import output_cache
from tiny import tiny_model

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("exact_fp32"),
]


@pytest.mark.parametrize(
    "family,mode,overrides",
    [
        ("gemma3", "plain", {}),
        ("llama", "plain", {}),
        ("llama", "fused", {}),
        ("mistral", "fused", {"sliding_window": 32}),  # every layer compressed and sliding
    ],
)
def test_captured_rows_equal_eager_rows_and_generate(family, mode, overrides):
    model = tiny_model(family, **overrides).to("cuda")
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 256, (n,), generator=g).to("cuda") for n in (150, 20, 230)]
    new = 45  # past the tiny Gemma's window (32): generated tokens leave it too
    refs, caches = [], []
    for ids in prompts:
        with compress(model, "snapkv:window=8", 24):
            refs.append(
                model.generate(ids.view(1, -1), max_new_tokens=new, do_sample=False)[0, ids.numel() :]
            )
            out = model(input_ids=ids.view(1, -1), use_cache=True, logits_to_keep=1)
        caches.append((output_cache(out), out.logits[:, -1].argmax(-1)))
    for graph in (True, False):
        decoder = BatchDecoder(model, rows=3, max_new_tokens=new, graph=graph, mode=mode)
        assert decoder.graph_on is graph
        for cache, first in caches:
            decoder.add(cache, first)
        decoder.run()
        for row, ref in enumerate(refs):
            assert torch.equal(decoder.pop(row), ref.cpu()), (graph, row)

"""The fast path: chunked prefill and a static, graph-captured decode step.

After compression every layer's size is fixed (kept prompt tokens + the tokens still to generate),
so the cache can be a preallocated buffer per layer and the decode step, a fixed sequence of
kernels, can be captured once as a CUDA graph and replayed per token instead of running the
model's Python per token. :class:`StaticDecoder` does that for one prefill's batch (many requests
prefilled apart, joining and leaving: :mod:`dynamickv.serving`); on CPU (or with ``graph=False``)
it runs the same static step eagerly, which is how its equality with ordinary decoding is tested.

:func:`chunked_prefill` bounds prefill memory: the position-wise parts of each decoder layer (the
MLP and norms) run over slices of the sequence, so their large intermediates (``n x intermediate``)
never exist for the whole prompt at once. Attention still sees the whole layer, and compression
keeps at most one layer's full K/V alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache


@contextmanager
def chunked_prefill(model: torch.nn.Module, chunk: int = 8192) -> Iterator[None]:
    """Run every decoder layer's MLP and RMS norms over ``chunk`` positions at a time.

    Only these module *instances* get a wrapped ``forward`` for the duration of the block.
    """
    targets = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "mlp" or leaf.endswith("layernorm") or leaf in ("norm", "pre_feedforward_layernorm"):
            targets.append(module)
    originals = []
    for module in targets:
        forward = module.forward

        def chunked(x, *args, _forward=forward, **kwargs):
            if x.dim() != 3 or x.shape[1] <= chunk:
                return _forward(x, *args, **kwargs)
            return torch.cat(
                [_forward(x[:, i : i + chunk], *args, **kwargs) for i in range(0, x.shape[1], chunk)], 1
            )

        originals.append((module, "forward" in module.__dict__, module.__dict__.get("forward")))
        module.forward = chunked
    try:
        yield
    finally:
        for module, had, old in originals:
            if had:
                module.forward = old
            else:
                del module.forward


class StaticDecoder:
    """Greedy decoding of one compressed (batched) prefill with static buffers and a CUDA graph.

    A :class:`~dynamickv.batch_decoder.BatchDecoder` holding the cache's rows, sized to it exactly.

    Args:
        model: the model the cache was made with.
        cache: the compressed cache after prefill (every attention layer compressed, or left
            uncompressed with a sliding window: then one request, see ``BatchDecoder.add``).
        max_new_tokens: capacity reserved per layer.
        graph: capture the step as a CUDA graph (default: when on one CUDA device).
        mode: how a step is computed (``auto``, ``plain``, ``functional``, ``fused``, ``compiled``;
            see :class:`~dynamickv.batch_decoder.BatchDecoder`).
        attention: the functional step's attention kernel (``sdpa``, ``matmul``, ``flex``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cache: Cache,
        max_new_tokens: int,
        graph: bool | None = None,
        mode: str = "auto",
        attention: str = "sdpa",
    ) -> None:
        from .batch_decoder import BatchDecoder
        from .sliding import prompt_views

        prompts = [
            k for k, _, _ in prompt_views(list(cache.layers), BatchDecoder.uncompressed_windows(model))
        ]
        self.cache = cache
        self.capacity = max_new_tokens
        self.decoder = BatchDecoder(
            model,
            rows=prompts[0].shape[0],
            max_new_tokens=max_new_tokens,
            prompt_slots=[k.shape[-2] for k in prompts],
            graph=graph,
            mode=mode,
            attention=attention,
        )
        self.graph_on = self.decoder.graph_on

    @torch.inference_mode()
    def generate(
        self, first_token: torch.Tensor, max_new_tokens: int, timings: list[float] | None = None
    ) -> torch.Tensor:
        """Greedy tokens ``[batch, max_new_tokens]``, starting by feeding ``first_token``.

        With ``timings``, each step is synchronised and its seconds appended (benchmarks)."""
        if max_new_tokens > self.capacity:
            raise ValueError(f"capacity is {self.capacity} tokens")
        decoder = self.decoder
        decoder.occupied = [False] * decoder.rows
        rows = decoder.add(self.cache, first_token, max_new_tokens)
        decoder.decode(max_new_tokens - 1, timings)
        return decoder.out[rows, :max_new_tokens].clone()

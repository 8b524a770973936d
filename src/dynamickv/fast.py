"""The fast path: chunked prefill and a static, graph-captured decode step.

After compression every layer's size is fixed (kept prompt tokens + the tokens still to generate),
so the cache can be a preallocated buffer per layer and the decode step, a fixed sequence of
kernels, can be captured once as a CUDA graph and replayed per token instead of running the
model's Python per token. :class:`StaticDecoder` does that; on CPU (or with ``graph=False``) it runs
the same static step eagerly, which is how its equality with ordinary decoding is tested.

:func:`chunked_prefill` bounds prefill memory: the position-wise parts of each decoder layer (the
MLP and norms) run over slices of the sequence, so their large intermediates (``n x intermediate``)
never exist for the whole prompt at once. Attention still sees the whole layer, and compression
keeps at most one layer's full K/V alive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .cache import CompressedLayer
from .errors import UnsupportedModelError


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


class StaticLayer(DynamicLayer):
    """A preallocated ``[batch, kv_heads, kept + max_new, head_dim]`` buffer for one layer.

    ``step`` (a one-element device tensor shared by all layers) counts generated tokens, so the
    write slot and the valid-slot mask are computed on the device: a captured graph stays valid.
    """

    is_sliding = False

    def __init__(self, layer: CompressedLayer, capacity: int, step: torch.Tensor) -> None:
        super().__init__()
        b, h, kept, d = layer.keys.shape
        self.dtype, self.device = layer.keys.dtype, layer.keys.device
        self.keys = torch.zeros(b, h, kept + capacity, d, dtype=self.dtype, device=self.device)
        self.values = torch.zeros_like(self.keys)
        self.keys[:, :, :kept] = layer.keys
        self.values[:, :, :kept] = layer.values
        self.kept, self.seen0, self.step = kept, layer.seen, step
        self.slots = torch.arange(kept + capacity, device=self.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[-2] != 1:
            raise RuntimeError("the static cache decodes one token at a time")
        index = self.step + self.kept
        self.keys.index_copy_(2, index, key_states)
        self.values.index_copy_(2, index, value_states)
        return self.keys, self.values

    def mask(self) -> torch.Tensor:
        """``[1, 1, 1, slots]`` bool: the kept tokens and every token written so far."""
        return (self.slots <= self.step + self.kept).view(1, 1, 1, -1)

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.seen0

    def get_mask_sizes(self, query_length: int, *args, **kwargs) -> tuple[int, int]:
        return self.keys.shape[-2], 0


class StaticDecoder:
    """Greedy decoding from a compressed cache with static buffers (and a CUDA graph on GPU).

    Args:
        model: the model the cache was made with (``sdpa`` attention, inside the Compressor's
            attention wrapper, which this class installs itself).
        cache: the compressed cache after prefill (every attention layer compressed).
        max_new_tokens: capacity reserved per layer.
        graph: capture the step as a CUDA graph (default: when on CUDA).
    """

    def __init__(self, model: torch.nn.Module, cache: Cache, max_new_tokens: int, graph: bool | None = None):
        from .compressor import Compressor

        self.model = model
        if not all(isinstance(layer, CompressedLayer) for layer in cache.layers):
            raise UnsupportedModelError("the static decoder needs every layer compressed (no sliding layers)")
        if any(layer.keys.shape[-2] != layer.prompt_kept for layer in cache.layers):
            raise RuntimeError("the static decoder starts right after prefill")
        for layer in cache.layers:  # its buffers never mask a token leaving a sliding window
            window = layer.sliding_window
            if window is not None and int(layer.positions.min()) <= layer.seen + max_new_tokens - window:
                raise UnsupportedModelError(
                    f"decoding {max_new_tokens} tokens would move kept tokens out of the sliding window "
                    f"({window}); the static decoder does not mask them: decode with model.generate "
                    "inside compress, or fewer tokens"
                )
        device = cache.layers[0].keys.device
        # one step counter per device the layers live on (device_map splits), advanced together
        self.steps = {
            layer.keys.device: torch.zeros(1, dtype=torch.long, device=layer.keys.device)
            for layer in cache.layers
        }
        self.cache = _StaticCache(
            [StaticLayer(layer, max_new_tokens, self.steps[layer.keys.device]) for layer in cache.layers]
        )
        batch = cache.layers[0].keys.shape[0]
        self.seen0 = cache.layers[0].seen
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.full((batch, 1), self.seen0, dtype=torch.long, device=device)
        self.capacity = max_new_tokens
        # a CUDA graph captures one device's stream: layers split over devices decode without one
        one_cuda = device.type == "cuda" and len(self.steps) == 1
        if graph and not one_cuda:
            raise UnsupportedModelError("CUDA graph decoding needs every layer on one CUDA device")
        self.graph_on = one_cuda if graph is None else graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self._compressor = Compressor(model, "fullkv", budget=1)
        self._modules = self._compressor._modules
        self._cache_kw = self._compressor._cache_kw

    def _forward(self) -> torch.Tensor:
        out = self.model(
            input_ids=self.ids,
            position_ids=self.pos,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: self.cache},
        )
        return out.logits[:, -1]

    @torch.inference_mode()
    def generate(
        self, first_token: torch.Tensor, max_new_tokens: int, timings: list[float] | None = None
    ) -> torch.Tensor:
        """Greedy tokens ``[batch, max_new_tokens]``, starting by feeding ``first_token``.

        With ``timings``, each step is synchronised and its seconds appended (benchmarks)."""
        if max_new_tokens > self.capacity:
            raise ValueError(f"capacity is {self.capacity} tokens")
        out = [first_token.view(-1, 1)]
        with self._compressor:
            for m in self._modules:
                m.__dict__["_dynamickv_static"] = self.cache.layers[m.layer_idx]
            try:
                for _ in range(max_new_tokens - 1):
                    self.ids.copy_(out[-1])
                    if timings is not None:
                        _sync(self.ids.device)
                        t0 = time.perf_counter()
                    logits = self._step()
                    if timings is not None:
                        _sync(self.ids.device)
                        timings.append(time.perf_counter() - t0)
                    out.append(logits.argmax(-1, keepdim=True))
                    for step in self.steps.values():
                        step.add_(1)
                    self.pos.add_(1)
            finally:
                for m in self._modules:
                    m.__dict__.pop("_dynamickv_static", None)
        return torch.cat(out, dim=1)

    def _step(self) -> torch.Tensor:
        if not self.graph_on:
            return self._forward()
        if self.graph is None:
            # warm up on a side stream (allocator and kernels), then capture; the warm-up writes
            # slot `step` which the real step overwrites with the same values
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._forward()
        self.graph.replay()
        assert self.logits is not None
        return self.logits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StaticCache(Cache):
    def __init__(self, layers: list[StaticLayer]) -> None:
        super().__init__(layers=layers)

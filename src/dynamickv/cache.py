"""The compressed KV cache: each layer holds only its kept tokens, per KV head.

A :class:`CompressedLayer` replaces a ``transformers`` ``DynamicLayer`` inside whatever cache the
model is using (the one ``generate`` made, or one the caller passed). It stores real, smaller
tensors (``[batch, num_key_value_heads, kept, head_dim]``): a dropped token's memory is freed, not
masked. Layers may hold different numbers of tokens (PyramidKV, DynamicKV, WindowKV), so:

* ``get_seq_length`` reports how many tokens the model has *seen* (the original prompt length plus
  what was generated), so new tokens get the positions they would have had without compression;
* ``get_mask_sizes`` describes the kept tokens as the *last* positions of the sequence, sized for
  the longest compressed layer, and the attention wrapper right-aligns the mask for shorter layers.
  Kept tokens are never padding, so the only masking they need is causal order, which this
  alignment preserves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import UsageError
from .key_mask import attach_key_mask


@dataclass
class _LayerGroup:
    """Shared by the compressed layers of one cache, so each can size masks for the longest."""

    layers: list[CompressedLayer] = field(default_factory=list)

    def max_len(self) -> int:
        return max((layer.attention_len() for layer in self.layers), default=0)


class CompressedLayer(DynamicLayer):
    """A cache layer holding only the kept tokens of the prompt, then every generated token.

    ``positions`` (``[batch, kv_heads, kept]``, int64) records the original prompt position of each
    kept prompt token, in increasing order, for analysis and tests.
    """

    is_sliding = False
    #: The layer's sliding window ``W`` (``None``: full attention). Set by the compressor on layers of
    #: models whose every layer slides (Mistral-7B-v0.1, Phi-3-mini): see :mod:`dynamickv.sliding`.
    sliding_window: int | None = None

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        seen: int,
        group: _LayerGroup,
    ) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.positions = positions
        self.prompt_kept = keys.shape[-2]
        self.seen = seen
        self.is_initialized = True
        self.group = group
        group.layers.append(self)

    # -- compression ------------------------------------------------------------------------
    def keep(self, index: torch.Tensor) -> None:
        """Keep the prompt tokens at ``index`` (``[batch, kv_heads, k]``, into the current kept
        tokens, sorted). Only valid before any token is generated."""
        if self.keys.shape[-2] != self.prompt_kept:
            raise RuntimeError("cannot re-compress a layer after generation started")
        d = self.keys.shape[-1]
        gather = index.unsqueeze(-1).expand(-1, -1, -1, d)
        self.keys = torch.gather(self.keys, 2, gather)
        self.values = torch.gather(self.values, 2, gather)
        self.positions = torch.gather(self.positions, 2, index)
        self.prompt_kept = index.shape[-1]

    # -- views shared by every compressed layer type ------------------------------------------
    def padded_prompt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(keys, values, valid)`` of the kept prompt tokens as ``[batch, kv_heads, k, head_dim]``
        tensors; ``valid`` (``[batch, kv_heads, k]`` bool) marks real slots, ``None`` when all are.

        Why: decoders that copy a compressed prompt into their own buffers (the static decoder, batched
        serving) read every compressed layer type through this one view, whatever its storage.
        """
        k = self.prompt_kept
        return self.keys[:, :, :k], self.values[:, :, :k], None

    def kept_counts(self) -> torch.Tensor:
        """``[batch, kv_heads]`` prompt tokens kept per row and KV head."""
        b, h = self.keys.shape[:2]
        return torch.full((b, h), self.prompt_kept, dtype=torch.long)

    def kept_positions(self, row: int = 0) -> list[list[int]]:
        """Per KV head, the original prompt positions row ``row`` kept (ascending)."""
        return [[int(p) for p in head.tolist()] for head in self.positions[row, :, : self.prompt_kept]]

    def held_tensors(self) -> list[torch.Tensor]:
        """Every key/value tensor the layer holds (what :func:`cache_bytes` counts)."""
        return [self.keys, self.values]

    def attention_len(self) -> int:
        """Key slots attention sees: kept prompt tokens (padded width) plus generated tokens."""
        return self.keys.shape[-2]

    def generated(self) -> int:
        """Tokens appended since the prefill."""
        return self.keys.shape[-2] - self.prompt_kept

    def head_dim(self) -> int:
        return self.keys.shape[-1]

    def batch_heads(self) -> tuple[int, int]:
        b, h = self.keys.shape[:2]
        return int(b), int(h)

    # -- transformers cache-layer protocol ---------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        require_block()
        first = self.seen
        generated = self.keys.shape[-2] - self.prompt_kept
        self.seen += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = keys, values
        if self.sliding_window is None:
            return keys, values
        return self._slide(keys, values, first, generated, key_states.shape[-2])

    def _slide(self, keys, values, first: int, generated: int, queries: int):
        """A sliding layer's step: mask what each query can no longer see, free what no one will."""
        from .sliding import window_key_mask

        low, _ = self._column_bounds()
        mask = window_key_mask(self.positions, low, generated, first, queries, int(self.sliding_window))
        self.free_outside_window()
        return (keys if mask is None else attach_key_mask(keys, mask)), values

    def free_outside_window(self) -> None:
        """Drop the stored tokens no future query can see any more (sliding layers; the columns every
        row and head has left behind)."""
        from .sliding import evictable

        low, high = self._column_bounds()
        generated = self.keys.shape[-2] - self.prompt_kept
        prompt, gen = evictable(high, generated, self.seen, int(self.sliding_window))
        if prompt or gen:
            self.keys, self.values = self.keys[:, :, prompt + gen :], self.values[:, :, prompt + gen :]
            self.positions = self.positions[:, :, prompt:]
            self.prompt_kept -= prompt
            self._bounds = (self.positions, low[prompt:], high[prompt:])

    def _column_bounds(self) -> tuple[list[int], list[int]]:
        """:func:`dynamickv.sliding.column_bounds` of the current ``positions``, read from the device
        once per selection (not once per decoding step)."""
        from .sliding import column_bounds

        cached = self.__dict__.get("_bounds")
        if cached is None or cached[0] is not self.positions:
            cached = self._bounds = (self.positions, *column_bounds(self.positions))
        return cached[1], cached[2]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, *args, **kwargs) -> tuple[int, int]:
        past = self.group.max_len()
        return past + query_length, self.seen - past

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("a compressed cache cannot be cropped (assisted decoding is not supported)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.positions = self.positions[indices, ...]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def fork(self, group: _LayerGroup) -> CompressedLayer:
        """A new layer sharing this one's tensors (they are never written in place)."""
        layer = CompressedLayer(self.keys, self.values, self.positions, self.seen, group)
        layer.prompt_kept = self.prompt_kept
        layer.sliding_window = self.sliding_window
        layer.__dict__["_bounds"] = self.__dict__.get("_bounds")  # same positions tensor
        return layer


#: Number of ``compress`` blocks currently entered (any model): a compressed layer is only extended
#: inside one, where the attention wrapper aligns masks to its kept tokens.
_ACTIVE_BLOCKS = [0]


def _blocks_active() -> bool:
    return _ACTIVE_BLOCKS[0] > 0


def require_block() -> None:
    """Raise :class:`UsageError` unless a ``compress`` block is active (see ``CompressedLayer.update``)."""
    if not _blocks_active():
        raise UsageError(
            "this cache was compressed by dynamickv and can only be extended inside a "
            "`with compress(model, ...)` block (or through Pipeline.answer): outside it the model's "
            "attention does not know that each layer holds different tokens"
        )


def block_entered(delta: int) -> None:
    """Count a ``compress`` block in (``+1``) or out (``-1``); called by the compressor only."""
    _ACTIVE_BLOCKS[0] = max(0, _ACTIVE_BLOCKS[0] + delta)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name a model's ``forward`` takes its cache under: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (still accepted, deprecated, by 5.24)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output) -> Cache:
    """The cache of a model output, under either name."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def compressed_layers(cache: Cache) -> dict[int, CompressedLayer]:
    """The compressed layers of ``cache``, by model layer index."""
    return {i: layer for i, layer in enumerate(cache.layers) if isinstance(layer, CompressedLayer)}


def mean_kept(counts: torch.Tensor) -> int:
    """Kept tokens per (row, KV head) of ``counts``, on average, rounded (0 when empty)."""
    return round(float(counts.double().mean())) if counts.numel() else 0


def kept_tokens_per_layer(cache: Cache) -> list[int]:
    """Prompt tokens kept per layer per KV head (every layer, compressed or not, in model order).

    A layer whose rows or heads keep different counts reports their mean, rounded (for one prompt
    with head-adaptive budgets the mean is exact: the heads' counts sum to the layer budget)."""
    out = []
    for layer in cache.layers:
        if isinstance(layer, CompressedLayer):
            out.append(mean_kept(layer.kept_counts()))
        else:
            out.append(0 if layer.keys is None else int(layer.keys.shape[-2]))
    return out


def kept_tokens_per_layer_head(cache: Cache) -> list[list[int]]:
    """``[layer][kv_head]`` prompt tokens each KV head holds, summed over batch rows (for one prompt:
    what each head keeps), every layer in model order."""
    out = []
    for layer in cache.layers:
        if isinstance(layer, CompressedLayer):
            out.append([int(c) for c in layer.kept_counts().sum(dim=0).tolist()])
        elif getattr(layer, "keys", None) is not None:
            b, h, n, _ = layer.keys.shape
            out.append([int(b * n)] * int(h))
        else:
            out.append([])
    return out


def cache_bytes(cache: Cache) -> int:
    """Bytes of every key and value tensor the cache holds."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, CompressedLayer):
            tensors = layer.held_tensors()
        else:
            tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def full_cache_bytes(cache: Cache) -> int:
    """Bytes the same cache would hold uncompressed (compressed layers at every token seen)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, CompressedLayer):
            b, h = layer.batch_heads()
            # an uncompressed sliding layer holds the last W - 1 tokens (transformers' sliding layer)
            held = layer.seen if layer.sliding_window is None else min(layer.seen, layer.sliding_window - 1)
            total += 2 * b * h * layer.head_dim() * held * layer.keys.element_size()
        else:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def padding_tokens(cache: Cache) -> tuple[int, int]:
    """``(held, rectangular)``: token slots the compressed layers hold beyond the tokens they keep
    (measured from the tensors' sizes: 0 when nothing is padded), and the slots a rectangular
    ``[batch, kv_heads, widest, head_dim]`` layout would pad; both summed over layers, rows, heads."""
    held = rect = 0
    for layer in compressed_layers(cache).values():
        counts = layer.kept_counts()
        b, h = layer.batch_heads()
        kept = int(counts.sum()) + b * h * layer.generated()
        slot = 2 * layer.head_dim() * layer.keys.element_size()  # key + value bytes of one token slot
        held += sum(t.numel() * t.element_size() for t in layer.held_tensors()) // slot - kept
        rect += b * h * layer.attention_len() - kept
    return held, rect


def fork_cache(cache: Cache) -> Cache:
    """A copy of ``cache`` that can be extended without changing the original, without copying
    tensors: every cache layer concatenates into new tensors rather than writing in place."""
    import copy

    new = copy.copy(cache)
    group = _LayerGroup()
    new.layers = [
        layer.fork(group) if isinstance(layer, CompressedLayer) else copy.copy(layer)
        for layer in cache.layers
    ]
    return new

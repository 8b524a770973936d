"""The batched decoder's static buffers seen as a ``transformers`` cache, for its plain path.

:class:`~dynamickv.batch_decoder.BatchDecoder` keeps every layer's keys, values and mask in
preallocated ``[rows, kv_heads, slots, head_dim]`` buffers. Its ``"plain"`` mode runs the model's own
forward, so the model must find those buffers where it looks for a cache: :class:`SlotLayer` writes
each step's new key and value into the row's slot and answers the attention wrapper with the layer's
valid slots only. Kept apart from the decoder so that the decode loop reads on its own.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .decode_step import grouped_attention, write_slot


class SlotBuffers(Protocol):
    """What a :class:`SlotLayer` reads from its decoder (:class:`~dynamickv.batch_decoder.BatchDecoder`).

    A protocol rather than the class itself, so this module needs nothing from the decoder's."""

    #: Per layer, keys and values ``[rows, kv_heads, slots, head_dim]`` and the additive mask
    #: ``[rows, kv_heads, slots]``.
    buffers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    #: The longest sequence any row has seen (what the model asks the cache for).
    seen_max: int

    def slot_indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's write slot per row, and the row and head index tensors, on ``device``."""
        ...


class SlotLayer(DynamicLayer):
    """One layer's decoder buffers seen as a ``transformers`` cache layer (the plain path)."""

    is_sliding = False

    def __init__(self, decoder: SlotBuffers, index: int) -> None:
        super().__init__()
        self.decoder, self.index = decoder, index
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[-2] != 1:
            raise RuntimeError("the static decoder decodes one token at a time")
        keys, values, mask = self.decoder.buffers[self.index]
        slot, rows, heads = self.decoder.slot_indices(keys.device)
        write_slot(keys, rows, heads, slot, key_states[:, :, 0])
        write_slot(values, rows, heads, slot, value_states[:, :, 0])
        write_slot(mask, rows, heads, slot, torch.zeros((), dtype=mask.dtype, device=mask.device))
        return keys, values

    def attention(self, module, query, key, value, impl: str, inner, **kwargs):
        """The attention wrapper's static branch: attend to this layer's valid slots only."""
        mask = self.decoder.buffers[self.index][2].unsqueeze(2)  # [rows, kv_heads, 1, slots]
        scaling = kwargs.pop("scaling", None) or module.scaling
        if impl == "eager":  # the model's own eager attention, the mask spread over query heads
            mask = mask.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            return inner(module, query, key, value, mask, scaling=scaling, **kwargs)
        out = grouped_attention(query, key, value, mask, scaling)
        return out.transpose(1, 2).contiguous(), None

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.decoder.seen_max

    def get_mask_sizes(self, query_length: int, *args, **kwargs) -> tuple[int, int]:
        return self.decoder.buffers[self.index][0].shape[-2], 0


class SlotCache(Cache):
    """Every layer of a :class:`~dynamickv.batch_decoder.BatchDecoder` as one cache."""

    def __init__(self, layers: list[SlotLayer]) -> None:
        super().__init__(layers=layers)

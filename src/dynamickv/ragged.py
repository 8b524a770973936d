"""A compressed cache layer whose batch rows and KV heads hold different numbers of tokens.

Head-adaptive budgets (Ada-KV) give each KV head its own count; per-row budgets in a left-padded
batch give each row its own. A rectangular ``[batch, kv_heads, k, head_dim]`` tensor would have
to be padded to the largest count, and that padding is memory the cache holds for nothing. So a
:class:`RaggedLayer` holds:

* the kept prompt tokens **packed**: ``keys`` and ``values`` are ``[total_kept, head_dim]``, the
  tokens of (row 0, head 0), then (row 0, head 1), ... in prompt order, with ``counts``
  (``[batch, kv_heads]``) saying how many each (row, head) has;
* the generated tokens, which every (row, head) gets one of per step, as a rectangular tail
  ``[batch, kv_heads, generated, head_dim]``.

The bytes held are exactly the kept tokens plus the generated ones (:meth:`held_tensors`).

Attention reads a *transient* padded view built per call (:meth:`update`): the prompt part
gathered to ``[batch, kv_heads, width, head_dim]`` (``width`` = the largest count), each (row,
head)'s tokens right-aligned, then the tail, plus a key mask (``attach_key_mask``) that hides the
padding slots, which the attention wrapper combines with the model's own mask. Right alignment
matters: the model's mask treats the layer's slots as the last positions of the sequence, and a
row's real tokens are the last positions of a left-padded row, so the slots a row really uses are
never hidden by the model's padding mask. The view exists for one layer at a time and is freed
after its attention. Decoders that copy prompts into their own buffers read
:meth:`padded_prompt` (``valid`` marks the real slots).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .cache import CompressedLayer, _LayerGroup, require_block
from .errors import UnsupportedModelError
from .key_mask import attach_key_mask
from .selection import Selection


class RaggedLayer(CompressedLayer):
    """Kept prompt tokens packed per (row, KV head), then a rectangular tail of generated tokens.

    Build one with :meth:`from_selection`. ``prompt_kept`` is the padded width of
    :meth:`padded_prompt` (the largest count); :meth:`kept_counts` gives every (row, head)'s count.
    """

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        counts: torch.Tensor,
        seen: int,
        group: _LayerGroup,
        tail: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        DynamicLayer.__init__(self)
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values  # packed [total, head_dim]
        self.packed_positions = positions  # [total] original prompt position of each kept token
        self.counts = counts.to(device=keys.device, dtype=torch.long)
        self.counts_cpu = self.counts.cpu()
        self.width = int(self.counts_cpu.max()) if self.counts_cpu.numel() else 0
        b, h = self.counts.shape
        if tail is None:
            empty = keys.new_empty(b, h, 0, keys.shape[-1])
            tail = (empty, empty)
        self.tail_keys, self.tail_values = tail
        self.seen = seen
        self.is_initialized = True
        self.group = group
        group.layers.append(self)
        self._layout: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_selection(cls, layer: CompressedLayer, selection: Selection, group: _LayerGroup) -> RaggedLayer:
        """Keep ``selection`` (relative to the layer's kept prompt tokens) of a rectangular layer that
        has not generated yet, packed: one gather, the rectangular tensors are released by the caller."""
        if layer.attention_len() != layer.prompt_kept:
            raise RuntimeError("cannot re-compress a layer after generation started")
        sel = selection.to(layer.keys.device)
        valid = sel.valid()
        b, h, w = sel.index.shape
        rows = torch.arange(b, device=valid.device).view(b, 1, 1).expand(b, h, w)[valid]
        heads = torch.arange(h, device=valid.device).view(1, h, 1).expand(b, h, w)[valid]
        slots = sel.index[valid]
        pos = layer.positions.to(valid.device)[rows, heads, slots]
        return cls(
            layer.keys[rows, heads, slots],
            layer.values[rows, heads, slots],
            pos,
            sel.counts,
            layer.seen,
            group,
        )

    def flat_slots(self, selection: Selection | torch.Tensor) -> torch.Tensor:
        """Packed indices of the slots ``selection`` keeps, in packed order."""
        sel = _as_selection(selection)
        offsets = self._offsets()
        flat = offsets.unsqueeze(-1) + sel.index.to(offsets.device)
        return flat[sel.valid().to(offsets.device)]

    def packed_take(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.keys.index_select(0, flat),
            self.values.index_select(0, flat),
            self.packed_positions.index_select(0, flat.to(self.packed_positions.device)),
        )

    def keep(self, index: torch.Tensor | Selection) -> None:
        """Keep ``index`` (a rectangular index or a :class:`Selection`, relative to each (row, head)'s
        current tokens). Only valid before any token is generated."""
        if self.tail_keys.shape[-2]:
            raise RuntimeError("cannot re-compress a layer after generation started")
        sel = _as_selection(index)
        self.keys, self.values, self.packed_positions = self.packed_take(self.flat_slots(sel))
        self.counts = sel.counts.to(device=self.keys.device, dtype=torch.long)
        self.counts_cpu = self.counts.cpu()
        self.width = int(self.counts_cpu.max())
        self._layout = self._mask = None

    # -- layout ----------------------------------------------------------------------------------
    def _offsets(self) -> torch.Tensor:
        flat = self.counts.flatten()
        return (torch.cumsum(flat, 0) - flat).view(self.counts.shape)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gather, valid)``, both ``[batch, kv_heads, width]``: the packed index of every padded
        slot (right-aligned) and whether the slot is real. Cached (a few bytes per slot)."""
        if self._layout is None:
            counts = self.counts.unsqueeze(-1)
            slots = torch.arange(self.width, device=self.counts.device)
            local = slots - (self.width - counts)
            valid = local >= 0
            gather = self._offsets().unsqueeze(-1) + local.clamp_min(0)
            gather = gather.clamp(0, max(self.keys.shape[0] - 1, 0))
            self._layout = (gather, valid)
        return self._layout

    def padded_prompt(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        gather, valid = self.layout()
        if self.keys.shape[0] == 0:
            empty = self.tail_keys[..., :0, :]
            return empty, empty, valid
        shape = (*gather.shape, self.keys.shape[-1])
        flat = gather.view(-1)
        return (
            self.keys.index_select(0, flat).view(shape),
            self.values.index_select(0, flat).view(shape),
            valid,
        )

    def _key_mask(self, slots: int) -> torch.Tensor:
        """``[batch, kv_heads, slots]`` bool: the prompt's valid slots, then every tail slot. A view of
        a buffer that grows by doubling, so a decode step builds no mask."""
        buf = self._mask
        if buf is None or buf.shape[-1] < slots:
            _, valid = self.layout()
            b, h = self.counts.shape
            size = max(slots, 2 * (buf.shape[-1] if buf is not None else 0), self.width + 64)
            buf = torch.ones(b, h, size, dtype=torch.bool, device=valid.device)
            buf[..., : self.width] = valid
            self._mask = buf
        return buf[..., :slots]

    def kept_counts(self) -> torch.Tensor:
        return self.counts_cpu.clone()

    @property
    def prompt_kept(self) -> int:  # type: ignore[override]
        return self.width

    @property
    def positions(self) -> torch.Tensor:  # type: ignore[override]
        """``[batch, kv_heads, width]`` original positions, right-aligned like :meth:`padded_prompt`;
        ``-1`` at padding slots."""
        gather, valid = self.layout()
        pos = self.packed_positions.to(gather.device)[gather] if self.keys.shape[0] else gather
        return torch.where(valid, pos, torch.full_like(pos, -1))

    def kept_positions(self, row: int = 0) -> list[list[int]]:
        pos = self.positions[row]
        return [[int(p) for p in pos[h].tolist() if p >= 0] for h in range(pos.shape[0])]

    def held_tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values, self.tail_keys, self.tail_values]

    def attention_len(self) -> int:
        return self.width + self.tail_keys.shape[-2]

    def generated(self) -> int:
        return self.tail_keys.shape[-2]

    def head_dim(self) -> int:
        return self.keys.shape[-1]

    def batch_heads(self) -> tuple[int, int]:
        b, h = self.counts.shape
        return int(b), int(h)

    # -- transformers cache-layer protocol ----------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):

        require_block()
        if self.sliding_window is not None:
            self.free_outside_window()
        self.seen += key_states.shape[-2]
        self.tail_keys = torch.cat([self.tail_keys, key_states], dim=-2)
        self.tail_values = torch.cat([self.tail_values, value_states], dim=-2)
        keys, values, _ = self.padded_prompt()
        keys = torch.cat([keys, self.tail_keys], dim=-2)
        values = torch.cat([values, self.tail_values], dim=-2)
        return attach_key_mask(keys, self._key_mask(keys.shape[-2])), values

    def free_outside_window(self) -> None:
        """Sliding-window layers with different counts per row or head are not supported."""
        if self.sliding_window is not None:
            raise UnsupportedModelError(
                "per-row or head-adaptive budgets on sliding-window layers are not supported: use a "
                "uniform method (e.g. snapkv) or a batch of one for this model"
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._take_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        rows = torch.arange(self.counts.shape[0], device=self.counts.device)[indices]
        self._take_rows(rows)

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = torch.arange(self.counts.shape[0], device=self.counts.device).repeat_interleave(repeats)
        self._take_rows(rows)

    def _take_rows(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.counts.device)
        b, h = self.counts.shape
        counts = self.counts[rows]
        index = torch.arange(int(self.counts_cpu.max()), device=rows.device).expand(len(rows), h, -1)
        # slots of the chosen rows, relative to their (row, head) start: a selection over old rows
        offsets = self._offsets()[rows].unsqueeze(-1)
        valid = index < counts.unsqueeze(-1)
        flat = (offsets + index)[valid]
        self.keys, self.values, self.packed_positions = self.packed_take(flat)
        self.tail_keys = self.tail_keys[rows.to(self.tail_keys.device)]
        self.tail_values = self.tail_values[rows.to(self.tail_values.device)]
        self.counts = counts
        self.counts_cpu = counts.cpu()
        self.width = int(self.counts_cpu.max()) if counts.numel() else 0
        self._layout = self._mask = None

    def fork(self, group: _LayerGroup) -> RaggedLayer:
        """A new layer sharing this one's tensors (they are never written in place)."""
        layer = RaggedLayer(
            self.keys,
            self.values,
            self.packed_positions,
            self.counts,
            self.seen,
            group,
            (self.tail_keys, self.tail_values),
        )
        layer._layout, layer._mask = self._layout, self._mask  # read-only: shared safely
        return layer


def _as_selection(index: torch.Tensor | Selection) -> Selection:
    if isinstance(index, Selection):
        return index
    b, h, k = index.shape
    return Selection(index, torch.full((b, h), k, dtype=torch.long, device=index.device))

"""Keep operations whose token counts differ per batch row or per KV head.

A method answers each layer with the tokens to keep. When every (row, KV head) keeps the same
number, that is a plain ``[batch, kv_heads, k]`` index tensor. When counts differ (per-row budgets
in a left-padded batch, head-adaptive budgets), it is a :class:`Selection`: the same index tensor
padded to the widest (row, head), plus the count of real entries of each. The cache turns a
:class:`Selection` into a packed :class:`~dynamickv.ragged.RaggedLayer`, so the padding here never
reaches memory that is held.

:func:`compose` builds either form from two parts every method's selection is made of: a sorted
set of chosen positions per (row, head) and a contiguous run that is always kept (the observation
window, StreamingLLM's recent tokens, DynamicKV's window slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """Kept slots per (row, KV head) with counts that may differ.

    Attributes:
        index: ``[batch, kv_heads, width]`` long; ``index[r, h, :counts[r, h]]`` are the kept slots of
            row ``r``, head ``h`` (ascending, relative to the layer's current tokens); the rest is
            padding and is never read.
        counts: ``[batch, kv_heads]`` long, on ``index``'s device.
    """

    index: torch.Tensor
    counts: torch.Tensor

    @property
    def width(self) -> int:
        return self.index.shape[-1]

    def valid(self) -> torch.Tensor:
        """``[batch, kv_heads, width]`` bool: True at real entries."""
        slots = torch.arange(self.width, device=self.index.device)
        return slots < self.counts.unsqueeze(-1)

    def to(self, device: torch.device | str) -> Selection:
        return Selection(self.index.to(device), self.counts.to(device))

    def expand_heads(self, heads: int) -> Selection:
        """The selection of a single shared head (``kv_heads == 1``) for every one of ``heads``."""
        b, _, w = self.index.shape
        return Selection(self.index.expand(b, heads, w), self.counts.expand(b, heads))

    def rectangular(self) -> torch.Tensor | None:
        """The plain ``[batch, kv_heads, k]`` index when every (row, head) keeps ``k``, else ``None``."""
        lo, hi = int(self.counts.min()), int(self.counts.max())
        return self.index[..., :hi] if lo == hi else None


#: What a keep operation may carry: a rectangular index, a :class:`Selection`, or ``None`` (keep all).
KeepIndex = torch.Tensor | Selection | None


def _broadcast(value: int | torch.Tensor, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """An int, a per-row ``[batch]`` or a per-(row, head) ``[batch, heads]`` value as ``[batch, heads]``."""
    if isinstance(value, torch.Tensor):
        value = value.to(device=device, dtype=torch.long)
        return value.view(batch, -1).expand(batch, heads)
    return torch.full((batch, heads), int(value), dtype=torch.long, device=device)


def compose(
    chosen: torch.Tensor,
    counts: torch.Tensor,
    run_start: int | torch.Tensor,
    run_len: int | torch.Tensor,
) -> torch.Tensor | Selection:
    """``chosen[r, h, :counts[r, h]]`` (ascending) followed by the run ``run_start .. run_start +
    run_len`` of row ``r``: a rectangular index when every (row, head) ends up with the same count,
    else a :class:`Selection`.

    Args:
        chosen: ``[batch, kv_heads, c]`` long, ascending in each valid prefix (``c`` may be 0).
        counts: ``[batch, kv_heads]`` valid entries of ``chosen``.
        run_start, run_len: shared ints, per row (``[batch]``) or per (row, head) (``[batch, kv_heads]``,
            e.g. the window of a layer whose heads already hold different counts); the run must lie
            after every chosen position of its (row, head) so the result stays sorted.
    """
    b, h = counts.shape
    device = chosen.device
    counts = counts.to(device=device, dtype=torch.long)
    start = _broadcast(run_start, b, h, device).unsqueeze(-1)
    length = _broadcast(run_len, b, h, device)
    total = counts + length
    width = int(total.max()) if total.numel() else 0
    slots = torch.arange(width, device=device).view(1, 1, width)
    c = counts.unsqueeze(-1)
    if chosen.shape[-1] < width:
        chosen = torch.nn.functional.pad(chosen, (0, width - chosen.shape[-1]))
    head = chosen[..., :width]
    index = torch.where(slots < c, head, start + (slots - c))
    index = torch.where(slots < total.unsqueeze(-1), index, torch.zeros_like(index))
    if int(total.min()) == width:
        return index
    return Selection(index, total)


def top_sorted(scores: torch.Tensor, counts: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., max(counts)]``: the indices of the ``counts[...]`` highest ``scores[...]`` (ties to the
    lower index), ascending; entries past a count hold ``scores.shape[-1]`` (a sentinel, after every
    real index). ``order`` is ``scores`` sorted descending (stable), when the caller already has it."""
    if order is None:
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    cmax = int(counts.max()) if counts.numel() else 0
    top = order[..., :cmax]
    slots = torch.arange(cmax, device=top.device)
    sentinel = torch.full_like(top, scores.shape[-1])
    return torch.where(slots < counts.to(top.device).unsqueeze(-1), top, sentinel).sort(dim=-1).values


def top_by_counts(
    scores: torch.Tensor,
    counts: torch.Tensor,
    run_start: int | torch.Tensor,
    run_len: int | torch.Tensor,
    order: torch.Tensor | None = None,
) -> torch.Tensor | Selection:
    """The ``counts[r, h]`` highest ``scores[r, h]`` (ties to the lower position), in prompt order,
    followed by the always-kept run (see :func:`compose`)."""
    return compose(top_sorted(scores, counts, order), counts, run_start, run_len)

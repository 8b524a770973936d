"""The key mask: how a cache layer tells attention which of the key slots it returns to hide.

Why a module of its own: cache layers (``cache``, ``ragged``) attach the mask and the attention
wrapper (``compressor``) reads it. Both sides import this small module, and neither imports the
other.
"""

from __future__ import annotations

import torch

#: Attribute a cache layer may set on the key tensor its ``update`` returns: a bool mask
#: ``[batch, kv_heads or 1, queries or 1, keys]`` (True: the query may attend to that key slot).
KEY_MASK_ATTR = "_dynamickv_key_mask"


def attach_key_mask(key: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mark ``key`` (as returned by a cache layer's ``update``) with a per-row, per-KV-head slot mask.

    Why: a layer whose rows or KV heads hold different numbers of tokens (per-row budgets in a batch,
    head-adaptive budgets, sliding-window layers) stores them in a padded view for attention; the
    padding, or tokens a head must no longer see, are masked here, on top of the model's own mask.
    A mask already attached to ``key`` is kept: the two are ANDed, so independent reasons to hide a
    slot (a row's padding, a sliding window) compose.
    """
    old = getattr(key, KEY_MASK_ATTR, None)
    if old is not None:
        mask = (old.unsqueeze(2) if old.dim() == 3 else old) & (
            mask.unsqueeze(2) if mask.dim() == 3 else mask
        )
    setattr(key, KEY_MASK_ATTR, mask)
    return key


def with_key_mask(
    attention_mask: torch.Tensor | None,
    key_mask: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    impl: str,
) -> torch.Tensor:
    """The model's mask (right-aligned to ``key``, causal) combined with a cache layer's key mask.

    Returns a bool mask ``[batch, heads, queries, keys]`` for ``sdpa`` or the additive float mask
    ``eager`` expects; ``heads`` is the query heads when the key mask is per KV head.
    """
    b, hq, q, _ = query.shape
    kv = key.shape[-2]
    if attention_mask is None:  # the model relied on is_causal: queries are the last q positions
        qpos = torch.arange(kv - q, kv, device=key.device).view(q, 1)
        base = (torch.arange(kv, device=key.device).view(1, kv) <= qpos).view(1, 1, q, kv)
    elif attention_mask.dtype == torch.bool:
        base = attention_mask
    else:  # additive float mask (eager): 0 where allowed, the dtype's minimum where not
        base = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    mask = key_mask.to(key.device)
    if mask.dim() == 3:
        mask = mask.unsqueeze(2)
    heads = mask.shape[1]
    if heads not in (1, hq):
        mask = mask.repeat_interleave(hq // heads, dim=1)
    out = base & mask
    if impl == "eager":
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        return torch.where(out, zero, torch.finfo(query.dtype).min)
    return out

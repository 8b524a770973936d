"""Sliding-window attention layers (Mistral-7B-v0.1: 4096 on every layer; Phi-3-mini-4k: 2047).

A sliding layer with window ``W`` lets the query at position ``t`` attend to positions ``t - W + 1 ..
t`` only (``transformers``' ``sliding_window_overlay``: ``kv > q - W``), so after a prompt of ``n``
tokens the next query, at position ``n``, can still see the prompt positions ``>= n - W + 1`` and
never again the ones before. That fixes what compressing such a layer means:

* a layer whose window covers the whole prompt (``n < W``) attends to all of it: it is compressed
  like a full-attention layer, and ``B >= n`` keeps everything;
* otherwise the candidates are the last ``W - 1`` prompt tokens (the only ones the layer can still
  attend to): the method selects within them, scored by the observation window's attention over
  them, and a layer keeps ``min(B, W - 1)`` tokens (the uncompressed layer holds ``W - 1`` too);
* while decoding, a kept token stays visible until it leaves the window by its *original*
  position, exactly as without compression: each compressed layer masks the kept tokens a query can
  no longer see (a per-KV-head key mask, since heads keep different positions) and frees the
  columns no future query of any head can see, so a layer never holds more than ``W - 1`` tokens.

Interleaved local layers (Gemma 3, window 512, next to full-attention layers) are left uncompressed:
their cache is already bounded by the window, and one candidate set per prompt is what lets the
cross-layer methods (PyramidKV, DynamicKV, WindowKV) compare and redistribute budgets between layers.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from .errors import UnsupportedModelError


def layer_windows(model: torch.nn.Module) -> list[int | None]:
    """The sliding window of every layer (``None`` for a full-attention layer), as the model's own
    ``DynamicCache`` lays its layers out (``layer_types`` or the config's ``sliding_window``)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    n_layers = model.config.get_text_config().num_hidden_layers
    if not cache.layers:
        return [None] * n_layers
    return [
        int(layer.sliding_window) if getattr(layer, "is_sliding", False) else None for layer in cache.layers
    ]


def restrict_to_window(
    valid: torch.Tensor | None, batch: int, n: int, n_eff: int, window: int, device: torch.device
) -> tuple[torch.Tensor | None, int]:
    """``(valid, n_eff)`` (``[batch, n]``) with the prompt positions a sliding layer can no longer
    attend to (``< n - W + 1``) marked invalid, like padding: the methods never select them and score
    only the rest."""
    first = n - window + 1
    if first <= 0:  # the window covers the whole prompt
        return valid, n_eff
    visible = (torch.arange(n, device=device) >= first).view(1, n)
    restricted = visible.expand(batch, n).clone() if valid is None else valid & visible.to(valid.device)
    return restricted, min(n_eff, window - 1)


def column_bounds(positions: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per storage column, the smallest and largest kept position over rows and heads (host lists,
    both increasing, since every head's positions are sorted): read once, so that a decoding step
    decides what to mask and what to free without waiting for the device."""
    if positions.numel() == 0:
        return [], []
    both = torch.stack([positions.amin(dim=(0, 1)), positions.amax(dim=(0, 1))]).tolist()
    return both[0], both[1]


def window_key_mask(
    positions: torch.Tensor,
    column_min: list[int],
    generated: int,
    first_query: int,
    queries: int,
    window: int,
) -> torch.Tensor | None:
    """Which stored keys each new query may see, ``[batch, kv_heads, queries, keys]`` bool, or ``None``
    when every stored key is inside every query's window (causal order is the model's mask's job).

    The stored keys are the kept prompt tokens (``positions``, ``[batch, kv_heads, kept]``, whose
    per-column minima are ``column_min``), then ``generated`` earlier tokens at ``first_query -
    generated ..`` and the ``queries`` new ones at ``first_query ..``.
    """
    oldest = first_query - generated
    if column_min:
        oldest = min(oldest, column_min[0])
    if oldest > first_query + queries - 1 - window:  # visible to the last (and so every) query
        return None
    device = positions.device
    lowest = torch.arange(queries, device=device) + first_query - window + 1  # oldest visible, per query
    b, h, _ = positions.shape
    prompt = positions.unsqueeze(2) >= lowest.view(1, 1, queries, 1)
    recent = torch.arange(first_query - generated, first_query + queries, device=device)
    recent = (recent.view(1, -1) >= lowest.view(-1, 1)).expand(b, h, queries, -1)
    return torch.cat([prompt, recent], dim=-1)


def evictable(column_max: list[int], generated: int, next_query: int, window: int) -> tuple[int, int]:
    """``(prompt columns, generated columns)`` at the front of a layer's storage that no future query
    of any row or head can see: the prompt columns whose largest position is out of the window (a
    prefix, since ``column_max`` increases), then, once no prompt column is left, the generated
    tokens out of it."""
    lowest = next_query - window + 1
    prompt = bisect.bisect_left(column_max, lowest)
    gen = 0
    if prompt == len(column_max):  # generated tokens are younger than every prompt token
        gen = max(0, min(generated, lowest - (next_query - generated)))
    return prompt, gen


def window_prompt(layer: Any, window: int) -> tuple[torch.Tensor, torch.Tensor, None]:
    """An uncompressed sliding layer's prompt tokens a next query can still see: its last ``W - 1``
    (what ``transformers``' sliding layer keeps), as ``(keys, values, valid)``."""
    keep = window - 1
    return layer.keys[:, :, -keep:], layer.values[:, :, -keep:], None


def prompt_views(layers: Sequence[Any], windows: Sequence[int | None]) -> list[tuple]:
    """Each cache layer's prompt as ``(keys, values, valid)``: a compressed layer's
    ``padded_prompt()``, or an uncompressed sliding layer's :func:`window_prompt` (``windows``: per
    layer, such a layer's window, else ``None``; :meth:`BatchDecoder.uncompressed_windows`)."""
    if len(layers) != len(windows) or not all(
        w is not None or hasattr(la, "padded_prompt") for la, w in zip(layers, windows)
    ):
        raise UnsupportedModelError("the static decoder needs every layer compressed or sliding")
    return [la.padded_prompt() if w is None else window_prompt(la, w) for la, w in zip(layers, windows)]

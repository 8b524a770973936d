"""Continuous batching of compressed requests: each prompt is prefilled and compressed alone when a
decoder row is free, then decoded with the others from the static buffers of
:class:`~dynamickv.batch_decoder.BatchDecoder` (re-exported here with its helpers)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from .batch_decoder import MODES, BatchDecoder, parse_mode
from .cache import output_cache
from .errors import InputError
from .methods import RECOMMENDED
from .sliding import window_prompt

__all__ = ["MODES", "BatchDecoder", "parse_mode", "serve", "window_prompt"]


def serve(
    model: torch.nn.Module,
    prompts: Sequence[torch.Tensor],
    method: str = RECOMMENDED,
    budget: Any = 128,
    *,
    rows: int = 8,
    max_new_tokens: int | Sequence[int] = 64,
    eos_token_id: int | Sequence[int] | None = None,
    sync_every: int = 8,
    chunk: int = 8192,
    decoder_options: dict[str, Any] | None = None,
    **params: Any,
) -> list[torch.Tensor]:
    """Greedy answers to ``prompts`` (1-D token ids each) with continuous batching.

    Each prompt is prefilled alone (compressed with ``method`` at ``budget``, chunked MLPs) when a
    row is free, then decoded with the others in a :class:`BatchDecoder` of ``rows`` rows; a row
    whose request ends (EOS or its ``max_new_tokens``: one for all, or one per prompt) takes the
    next prompt. Returns, per prompt, its generated tokens (the first one included; EOS included
    when reached).
    """
    from .compressor import Compressor
    from .fast import chunked_prefill  # fast builds on batch_decoder: imported when called

    _check_prompts(prompts)
    if sync_every < 1 or chunk < 1:  # sync_every=0 would decode nothing, forever
        raise InputError(f"sync_every and chunk must be at least 1, got {sync_every} and {chunk}")
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise InputError(f"{len(limits)} max_new_tokens for {len(prompts)} prompts")
    if any(not isinstance(n, int) or n < 1 for n in limits):
        raise InputError(f"max_new_tokens must be at least 1 per prompt, got {limits}")
    decoder = BatchDecoder(model, rows, max(limits), eos_token_id=eos_token_id, **(decoder_options or {}))
    compressor = Compressor(model, method, budget, **params)
    pending = deque(enumerate(prompts))
    owner: dict[int, int] = {}
    results: list[torch.Tensor | None] = [None] * len(prompts)
    while pending or owner:
        while pending and decoder.free_rows():
            i, ids = pending.popleft()
            with torch.inference_mode(), compressor, chunked_prefill(model, chunk):
                out = model(input_ids=ids.view(1, -1).to(decoder.device), use_cache=True, logits_to_keep=1)
            (row,) = decoder.add(output_cache(out), out.logits[:, -1].argmax(-1), limits[i])
            owner[row] = i
        for row in decoder.finished():
            results[owner.pop(row)] = decoder.pop(row)
        if owner:
            decoder.decode(sync_every)
    return results  # type: ignore[return-value]


def _check_prompts(prompts: Sequence[torch.Tensor]) -> None:
    """Each prompt one row of at least 2 token ids: a ``[2, n]`` tensor would be joined into one prompt."""
    if not prompts:
        raise InputError("no prompts to serve")
    for i, ids in enumerate(prompts):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point:
            what = f"a {ids.dim()}-D tensor" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise InputError(f"prompt {i} must be a 1-D tensor of token ids, got {what}")
        if ids.numel() < 2:
            raise InputError(f"prompt {i} has {ids.numel()} token(s); at least 2 are needed to compress it")

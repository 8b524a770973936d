"""The model's context limit: refuse (or cut) a prompt before the prefill, not minutes into it.

A prompt longer than the positions the model was built for gives meaningless output at best; at worst
(a 5 MB file is 1.4M tokens against SmolLM2's 8,192) the prefill runs for minutes and dies out of
memory. The limit is ``max_position_embeddings`` of the model's (text) configuration; the generated
tokens need positions too, so ``prompt + max_new_tokens`` must fit.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError


def context_length(model: Any) -> int | None:
    """``max_position_embeddings`` of the model's text configuration (``None`` when it has none)."""
    config = getattr(model, "config", model)
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def check_prompt_length(model: Any, prompt_tokens: int, max_new_tokens: int, hint: str = "") -> None:
    """Raise :class:`InputError` if ``prompt_tokens + max_new_tokens`` exceeds the model's positions."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        raise InputError(
            f"the prompt has {prompt_tokens} tokens (+{max_new_tokens} to generate) but the model handles "
            f"at most {limit} positions (max_position_embeddings){hint}"
        )


def check_answer_fits(model: Any, max_new_tokens: int) -> None:
    """Raise :class:`InputError` if the answer alone fills the model's positions: no cut of the context
    can make room then, so the error names the answer length instead."""
    limit = context_length(model)
    if limit is not None and max_new_tokens >= limit:
        raise InputError(
            f"an answer of up to {max_new_tokens} tokens does not fit the model's {limit} positions: "
            "lower the answer length (--max-new-tokens)"
        )


def overflow(model: Any, prompt_tokens: int, max_new_tokens: int) -> int:
    """How many tokens the prompt must lose to fit (0 when it fits or the limit is unknown)."""
    limit = context_length(model)
    return 0 if limit is None else max(0, prompt_tokens + max_new_tokens - limit)


def truncate_context_middle(context: str, tokenizer: Any, remove: int) -> str:
    """``context`` without about ``remove`` tokens from its middle (LongBench's rule: the first and the
    last halves of what may stay are kept). Raises :class:`InputError` if nothing would be left."""
    tokens = len(tokenizer(context, add_special_tokens=True)["input_ids"])
    keep = tokens - remove
    if keep < 2:
        raise InputError(
            f"the question and the answer alone need more positions than the model has ({remove} tokens "
            "too many with an empty context)"
        )
    return truncate_middle(context, tokenizer, keep)


def truncate_middle(prompt: str, tokenizer: Any, max_tokens: int) -> str:
    """Official middle truncation (``pred.py``): if the prompt has more than ``max_tokens`` tokens, keep
    the first and the last ``int(max_tokens / 2)`` tokens, each decoded with
    ``skip_special_tokens=True`` and concatenated without a separator.

    The prompt is tokenized with the tokenizer's default special tokens (as upstream, so a BOS token
    counts), and returned unchanged when it fits.
    """
    if max_tokens < 2:
        raise InputError(f"max_tokens must be at least 2 for middle truncation, got {max_tokens}")
    ids = tokenizer(prompt, truncation=False)["input_ids"]
    if len(ids) <= max_tokens:
        return prompt
    half = int(max_tokens / 2)
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[-half:], skip_special_tokens=True)
    return head + tail

"""One compressed answer with its accounting, as the CLI reports it."""

from __future__ import annotations

import random
from typing import Any

import torch

from .cache import cache_bytes, full_cache_bytes, kept_tokens_per_layer, kept_tokens_per_layer_head
from .limits import check_answer_fits, check_prompt_length, overflow, truncate_context_middle
from .pipeline import Pipeline, split_chat_prompt

_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    "A river runs through the old town, past the market and the mill. "
    "Children walk to school along the road while the baker opens his shop. "
    "In the afternoon the wind turns and the clouds gather over the hills. "
    "Farmers bring their goods to the square and talk about the weather. "
)


def needle_prompt(
    tokenizer: Any, context_tokens: int = 2000, depth: float = 0.5, seed: int = 0, number: int = 742
) -> tuple[str, str, str]:
    """A ~``context_tokens`` haystack with a magic number at ``depth``: ``(context, question, answer)``.

    Self-contained (no data package needed) so that the default job always runs. The needle is
    RULER's ("the special magic number is ...").
    """
    rng = random.Random(seed)
    sentences = [s.strip() + "." for s in _FILLER.split(".") if s.strip()]
    parts: list[str] = []
    while len(tokenizer(" ".join(parts)).input_ids) < context_tokens:
        parts.extend(rng.sample(sentences, len(sentences)))
    cut = int(len(parts) * depth)
    context = " ".join(parts[:cut]) + f" The special magic number is {number}. " + " ".join(parts[cut:])
    return context, "What is the special magic number mentioned in the text?", str(number)


def answer_report(
    model: torch.nn.Module,
    tokenizer: Any,
    context: str,
    question: str,
    method: str,
    budget: str | int,
    max_new_tokens: int = 64,
    *,
    truncate: str | None = None,
) -> dict[str, Any]:
    """Compress the whole prompt (context and question, chat-formatted) and answer.

    The question is part of the compressed prompt, as in the papers' evaluations, and ends it: the
    chat template's closing tokens (end of turn, assistant header) are fed after compression, so
    the observation window holds the question rather than template boilerplate.

    A prompt that does not fit the model's positions (with ``max_new_tokens``) is refused before the
    prefill, or with ``truncate="middle"`` its context is cut in the middle until it fits.
    """
    check_answer_fits(model, max_new_tokens)
    head_ids, tail_ids = _prompt_ids(model, tokenizer, context, question)
    original = head_ids.shape[-1] + tail_ids.shape[-1]
    for _ in range(4):  # re-tokenizing a cut text can shift a few tokens: cut again if needed
        excess = overflow(model, head_ids.shape[-1] + tail_ids.shape[-1], max_new_tokens)
        if not excess or truncate != "middle":
            break
        context = truncate_context_middle(context, tokenizer, excess + 4)
        head_ids, tail_ids = _prompt_ids(model, tokenizer, context, question)
    hint = "; shorten the context or pass --truncate middle" if truncate is None else ""
    check_prompt_length(model, head_ids.shape[-1] + tail_ids.shape[-1], max_new_tokens, hint)
    ids = torch.cat([head_ids, tail_ids], dim=-1)
    pipe = Pipeline(model, tokenizer, method, budget)
    ctx = pipe.prefill(head_ids)
    kv_bytes = cache_bytes(ctx.cache)
    full = full_cache_bytes(ctx.cache)
    answer = pipe.answer(ctx, tail_ids, max_new_tokens)
    return {
        "answer": answer,
        "method": method,
        "budget": str(budget),
        "prompt_tokens": int(ids.shape[-1]),
        "kept_tokens_per_layer": kept_tokens_per_layer(ctx.cache),
        "kept_tokens_per_layer_head": kept_tokens_per_layer_head(ctx.cache),
        "layer_budgets": ctx.stats.layer_budgets,
        "kv_heads": int(model.config.get_text_config().num_key_value_heads),
        "kv_bytes": kv_bytes,
        "full_kv_bytes": full,
        "prefill_seconds": ctx.prefill_seconds,
        "selection_seconds": ctx.stats.selection_seconds,
        **({"windowkv_mode": ctx.stats.extra["mode"]} if "mode" in ctx.stats.extra else {}),
        **({"allocation": ctx.stats.extra["allocation"]} if "allocation" in ctx.stats.extra else {}),
        **({"truncated_from": original} if original != ids.shape[-1] else {}),
    }


def _prompt_ids(model: Any, tokenizer: Any, context: str, question: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(head, tail)`` token ids of the chat-formatted ``context + question``: the head is compressed,
    the tail (end of turn, assistant header) is fed after compression."""
    head, tail = split_chat_prompt(tokenizer, context + "\n\n" + question.strip(), "")
    device = next(model.parameters()).device
    head_ids = tokenizer(head, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    tail_ids = tokenizer(tail, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    if tail_ids.shape[-1] == 0:  # no chat template: start decoding from the last prompt token
        head_ids, tail_ids = head_ids[:, :-1], head_ids[:, -1:]
    return head_ids, tail_ids

"""Prefill a context once, answer several questions from the same compressed cache.

Each answer runs on a *fork* of the compressed cache (new layer objects sharing the same tensors,
which are never written in place), so a question's tokens never reach the next question's cache.
The context is compressed without seeing any question (the observation window is the end of the
context), as a cache that serves many questions must be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache

from .budget import Budget
from .cache import cache_bytes, cache_kwarg, fork_cache, output_cache
from .compressor import Compressor, PrefillStats
from .errors import InputError
from .methods import RECOMMENDED, Method

_PLACEHOLDER = "\x00DYNAMICKV_SPLIT\x00"


@dataclass
class CompressedContext:
    """A compressed prefill of a context, ready to answer questions."""

    cache: Cache
    input_ids: torch.Tensor  # [1, n] the context tokens
    stats: PrefillStats
    prefill_seconds: float
    #: ``[1, vocab]`` the prefill's prediction after the last context token (full attention: the
    #: prefill attends to the whole prompt before compressing it)
    last_logits: torch.Tensor | None = None

    @property
    def kv_bytes(self) -> int:
        return cache_bytes(self.cache)


def split_chat_prompt(
    tokenizer: Any, context: str, question: str, use_chat_template: bool = True
) -> tuple[str, str]:
    """Split the chat-formatted prompt ``context + question`` into the part before the question
    (prefilled and compressed once) and the rest (question and assistant header)."""
    if not context:
        raise InputError("the context is empty")
    if _PLACEHOLDER in context or _PLACEHOLDER in question:
        raise InputError("the text contains dynamickv's internal placeholder")
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context + _PLACEHOLDER + question}],
            tokenize=False,
            add_generation_prompt=True,
        )
        head, tail = text.split(_PLACEHOLDER)
        return head, tail
    return context, question


class Pipeline:
    """Answer questions about a long context from one compressed prefill.

    >>> pipe = Pipeline(model, tokenizer, "dynamickv", budget=128)
    >>> ctx = pipe.prefill(long_text)
    >>> pipe.answer(ctx, "\\n\\nWho wrote it?")
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        method: str | Method = RECOMMENDED,
        budget: Budget | int | float | str = 128,
        *,
        use_chat_template: bool = True,
        **params: Any,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.compressor = Compressor(model, method, budget, **params)
        self.use_chat_template = use_chat_template

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        return ids.to(self.device)

    @torch.inference_mode()
    def prefill(self, context: str | torch.Tensor) -> CompressedContext:
        """Prefill and compress ``context`` (text, already chat-formatted if wanted, or token ids)."""
        ids = context if isinstance(context, torch.Tensor) else self._ids(context)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise InputError(
                f"Pipeline takes one context: token ids of shape [n] or [1, n], got {list(ids.shape)}"
            )
        if ids.shape[-1] == 0:
            raise InputError("the context is empty")
        if ids.shape[-1] < 2:  # one token is a decode step to the model: nothing would be compressed
            raise InputError("the context has 1 token; at least 2 are needed to compress it")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with self.compressor:
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        assert self.compressor.stats is not None
        return CompressedContext(output_cache(out), ids, self.compressor.stats, seconds, out.logits[:, -1])

    @torch.inference_mode()
    def answer(
        self,
        ctx: CompressedContext,
        question: str | torch.Tensor,
        max_new_tokens: int = 64,
        **generate_kwargs: Any,
    ) -> str:
        """Generate an answer to ``question`` (text appended after the context) from ``ctx``."""
        out = self.generate_ids(ctx, question, max_new_tokens, **generate_kwargs)
        return self.tokenizer.decode(out[0], skip_special_tokens=True)

    @torch.inference_mode()
    def generate_ids(
        self,
        ctx: CompressedContext,
        question: str | torch.Tensor,
        max_new_tokens: int = 64,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """``[1, k]`` greedy tokens after ``question`` (fed after the context) from ``ctx``'s cache."""
        q = question if isinstance(question, torch.Tensor) else self._ids(question)
        if q.dim() == 1:
            q = q.unsqueeze(0)
        if q.shape[-1] == 0:
            raise InputError("the question is empty: at least one token must follow the context")
        ids = torch.cat([ctx.input_ids, q], dim=-1)
        generate_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id
        generate_kwargs.setdefault("pad_token_id", pad if pad is not None else self.tokenizer.eos_token_id)
        with self.compressor:  # keeps dynamickv's attention for the multi-token question
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                **{cache_kwarg(self.model): fork_cache(ctx.cache)},
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )
        return out[:, ids.shape[-1] :]

    def ask(self, context: str, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        """Chat-format ``context`` + each question, prefill the context once, answer each.

        ``questions`` is a list (or tuple) of strings, one answer each; a lone string is refused
        rather than read as a list of characters.
        """
        if isinstance(questions, str):
            raise InputError(
                "questions must be a list of strings; for one question: ask(context, [question])"
            )
        questions = list(questions)
        if not questions:
            raise InputError("no questions given: ask(context, [question, ...]) needs at least one")
        bad = [type(q).__name__ for q in questions if not isinstance(q, str)]
        if bad:
            raise InputError(f"questions must be strings, got {', '.join(sorted(set(bad)))}")
        if not isinstance(context, str):
            raise InputError(f"the context must be a string, got {type(context).__name__}")
        heads_tails = [
            split_chat_prompt(self.tokenizer, context, q, self.use_chat_template) for q in questions
        ]
        heads = {h for h, _ in heads_tails}
        if len(heads) != 1:
            raise InputError(
                "the chat template places the question before the context; cannot share a prefill"
            )
        ctx = self.prefill(heads.pop())
        return [self.answer(ctx, tail, max_new_tokens) for _, tail in heads_tails]

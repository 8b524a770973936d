"""Tokenizer helpers the synthetic benchmarks share (RULER, NIAH): counting tokens the way RULER
counts them, what a chat template adds around a prompt, and a fingerprint that keys cached sample sets
by what a tokenizer does rather than where it was loaded from."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of ``text`` without special tokens (what RULER's ``HFTokenizer`` counts)."""
    return len(encode(tokenizer, text))


def encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    except TypeError:  # tokenizers whose encode has no ``verbose``
        return list(tokenizer.encode(text, add_special_tokens=False))


def template_overhead(tokenizer: Any) -> int:
    """Tokens the runner adds around a prompt: the chat template (with generation prompt) if the tokenizer
    has one, else the special tokens (BOS) ``encode`` adds."""
    probe = "Hello"
    plain = count_tokens(tokenizer, probe)
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": probe}], tokenize=False, add_generation_prompt=True
            )
            return max(0, count_tokens(tokenizer, text) - plain)
        except Exception:  # a template that rejects this probe: fall back to special tokens
            pass
    try:
        return max(0, len(tokenizer.encode(probe, add_special_tokens=True)) - plain)
    except Exception:  # pragma: no cover
        return 0


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash identifying the tokenizer by what it does: its vocabulary, the ids of a probe text, its
    special tokens and chat template. Not by its class or path: the same tokenizer loaded from another
    folder or by another ``transformers`` release must find the same cached samples."""
    probe = "RULER probe: The special magic number for 'quick-fox' is 7318024.\nVAR ABCDE = 12345 ...\u00e9"
    chat = getattr(tokenizer, "chat_template", None)
    try:
        vocab = sorted(tokenizer.get_vocab().items())
    except (AttributeError, NotImplementedError, TypeError):
        vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", None)
    info = {
        "vocab": hashlib.sha256(json.dumps(vocab, default=str).encode()).hexdigest(),
        "probe": encode(tokenizer, probe),
        "special": [getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)],
        "chat": hashlib.sha256(str(chat).encode()).hexdigest()[:16] if chat else None,
    }
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]

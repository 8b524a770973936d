"""Prompts: sample ids, and how a sample becomes the compressed part and the part fed after it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample


def sample_uid(sample: Sample) -> str:
    """The sample's id in the predictions file (``meta["uid"]`` overrides ``Sample.uid``, e.g. RULER's
    ``task/length/index`` when several lengths share indices)."""
    return str(sample.meta.get("uid") or sample.uid)


#: The evaluation protocols: what is compressed and what is fed after it. Every report names one.
PROTOCOLS: dict[str, str] = {
    "raw": (
        "question-aware, raw prompt (the DynamicKV/SnapKV papers'): the whole prompt, question included, "
        "is compressed with no chat template; the first answer token comes from the prefill's own logits, "
        "then greedy decoding from the compressed cache"
    ),
    "chat": (
        "question-aware, chat template: the prompt, question included, as the user turn is compressed; the "
        "end of turn, assistant header and answer prefix are fed after it, then greedy decoding"
    ),
    "agnostic": (
        "query-agnostic (kvpress's pipeline, SCBench's shared context): the context alone is compressed (as "
        "the start of the user turn where the sample uses a chat template); the question, end of turn, "
        "assistant header and answer prefix are fed after it, then greedy decoding"
    ),
}
DEFAULT_PROTOCOL = "raw"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return protocol


def split_prompt(sample: Sample, tokenizer: Any, protocol: str = "chat") -> tuple[torch.Tensor, torch.Tensor]:
    """``(head_ids, tail_ids)``, each ``[1, n]`` on the CPU: the head is compressed, the tail fed after it.

    ``protocol`` (see :data:`PROTOCOLS`):

    * ``"raw"``: the prompt tokenized as is (with the tokenizer's special tokens) is the head; the tail is
      empty, so the first answer token is the prefill's own prediction.
    * ``"chat"``: with a chat template (``sample.chat_template`` and the tokenizer has one) the prompt is the
      user turn; the tail is the end of turn plus assistant header, followed by ``meta["answer_prefix"]``
      (stripped from the end of the prompt), so the answer prefix starts the assistant turn. Without one the
      prompt is tokenized as is and its last token is the tail.
    * ``"agnostic"``: the prompt is cut at ``meta["question_offset"]``; the context is the head (as the start
      of the user turn under a chat template) and the question, with the answer prefix as in ``"chat"``,
      the tail.
    """
    from dynamickv.pipeline import split_chat_prompt

    check_protocol(protocol)
    prompt = sample.prompt
    if not prompt:
        raise InputError(f"sample {sample_uid(sample)} has an empty prompt")
    if protocol == "raw":
        head_ids = tokenizer(prompt, return_tensors="pt").input_ids
        tail_ids = head_ids[:, :0]
    else:
        context, question = prompt, ""
        if protocol == "agnostic":
            at = sample.meta.get("question_offset")
            if at is None:
                raise InputError(
                    f"sample {sample_uid(sample)} does not say where its context ends (meta['question_offset']): "
                    "the query-agnostic protocol needs the context and the question apart"
                )
            context, question = prompt[:at], prompt[at:]
        use_chat = bool(sample.chat_template and getattr(tokenizer, "chat_template", None))
        if use_chat:
            prefix = sample.meta.get("answer_prefix") or ""
            text = question if protocol == "agnostic" else context
            if prefix and text.endswith(prefix) and len(text) > len(prefix):
                text = text[: -len(prefix)]
            else:
                prefix = ""
            if protocol == "agnostic":
                question = text
            else:
                context = text
            head, tail = split_chat_prompt(tokenizer, context, question, True)
            tail = tail + prefix.lstrip()
            head_ids = tokenizer(head, return_tensors="pt", add_special_tokens=False).input_ids
            tail_ids = tokenizer(tail, return_tensors="pt", add_special_tokens=False).input_ids
        elif protocol == "agnostic":
            head_ids = tokenizer(context, return_tensors="pt").input_ids
            tail_ids = tokenizer(question, return_tensors="pt", add_special_tokens=False).input_ids
        else:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            head_ids, tail_ids = ids[:, :-1], ids[:, -1:]
        if tail_ids.shape[-1] == 0:
            head_ids, tail_ids = head_ids[:, :-1], head_ids[:, -1:]
    if head_ids.shape[-1] < 2:
        raise InputError(
            f"sample {sample_uid(sample)} is too short to compress ({head_ids.shape[-1]} tokens)"
        )
    return head_ids, tail_ids


def samples_digest(samples: Sequence[Sample]) -> str:
    """A fingerprint of what the samples ask (ids, prompts, answers, generation lengths)."""
    h = hashlib.sha256()
    for s in samples:
        item = [sample_uid(s), s.task, s.prompt, s.answers, s.max_new_tokens, s.chat_template, s.category]
        item.append(s.meta.get("answer_prefix"))
        item.append(bool(s.meta.get("stop_on_newline")))
        h.update(json.dumps(item, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:16]

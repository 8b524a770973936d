"""The evaluation tests' tiny world: a word tokenizer, a tiny random Llama, synthetic samples, a scorer.

Shared by the in-process runner tests and the ``torchrun`` worker (``dist_worker.py``), which must build
exactly the same model to compare a sharded run with a single-process one.
"""

from __future__ import annotations

import random

import torch

from dynamickv.eval import runner
from dynamickv.eval.base import Sample
from tiny import word_tokenizer

WORDS = [f"w{i}" for i in range(120)]
METHODS = ["snapkv", "pyramidkv", "dynamickv", "windowkv", "h2o", "streamingllm"]
BUDGETS = [40, 72]


def eval_tokenizer():
    return word_tokenizer(WORDS, join_with_spaces=False)


def eval_model(tok) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=1,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    mdl = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen attention so that the methods keep different tokens
        for name, p in mdl.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    mdl.generation_config.eos_token_id = None
    return mdl


def make_samples(n: int = 3, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 200)))
        out.append(
            Sample(
                task="recall" if i % 2 == 0 else "copy",
                index=i,
                prompt=prompt,
                answers=prompt.split()[-3:],
                max_new_tokens=5,
                category="qa" if i % 2 == 0 else "synthetic",
                chat_template=False,
                meta={"length": 256, "depth": float(50 * (i % 3))},
            )
        )
    return out


class OverlapScorer(runner.Scorer):
    """Share of predicted words found in the reference words (0-100): depends on the prediction."""

    name = "overlap"

    def sample(self, sample, prediction):
        words = prediction.split()
        return 100.0 * sum(w in sample.answers for w in words) / len(words) if words else 0.0

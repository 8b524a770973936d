"""The evaluation tests' tiny world: a word tokenizer, a tiny random Llama, synthetic samples, a scorer.

Shared by the in-process runner tests and the ``torchrun`` worker (``dist_worker.py``), which must build
exactly the same model to compare a sharded run with a single-process one.
"""

from __future__ import annotations

import json
import random

import torch

from dynamickv.eval import runner
from dynamickv.eval.base import Sample
from tiny import tiny_model, word_tokenizer

WORDS = [f"w{i}" for i in range(120)]
METHODS = ["snapkv", "pyramidkv", "dynamickv", "windowkv", "h2o", "streamingllm"]
BUDGETS = [40, 72]


def eval_tokenizer():
    return word_tokenizer(WORDS, join_with_spaces=False)


def eval_model(tok, family: str = "llama", **overrides) -> torch.nn.Module:
    """tests/tiny.py's model of ``family`` (Llama by default), 4 layers, sized to the word vocabulary,
    with no BOS/EOS; ``overrides`` go to its config."""
    model = tiny_model(
        family,
        vocab_size=len(tok),
        num_hidden_layers=4,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=1,
        **overrides,
    )
    model.generation_config.eos_token_id = None
    return model


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


def run_grid(samples, model, tok, out, **kwargs) -> dict:
    """``runner.run`` over the tests' grid (METHODS x BUDGETS, the overlap scorer, no progress bar)."""
    kwargs.setdefault("scorer", OverlapScorer())
    kwargs.setdefault("progress", False)
    # one decode per configuration, so tests can count or interrupt decodes (batched: test_eval_batched)
    kwargs.setdefault("batch_decode", False)
    methods, budgets = kwargs.pop("methods", METHODS), kwargs.pop("budgets", BUDGETS)
    return runner.run(samples, model, tok, methods, budgets, out, **kwargs)


def stable_record(record: dict) -> str:
    """A prediction record without its timings and how it was decoded (batched or alone: the same
    answer), i.e. what must not differ between equivalent runs."""
    skip = runner.TIMING_FIELDS | {"decode"}
    return json.dumps({k: v for k, v in record.items() if k not in skip}, sort_keys=True)


def stable_metrics(metrics: dict) -> dict:
    """Metrics without their timings."""
    out = {k: v for k, v in metrics.items() if k != "timing"}
    out["cost"] = {
        m: {b: {k: v for k, v in row.items() if k != "seconds"} for b, row in rows.items()}
        for m, rows in metrics["cost"].items()
    }
    return out

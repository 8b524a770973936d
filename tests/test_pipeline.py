"""One compressed prefill, several questions; multi-token extension of ragged caches."""

from __future__ import annotations

import pytest
import torch

from dynamickv import InputError
from dynamickv.cache import fork_cache
from dynamickv.pipeline import Pipeline
from tiny import tiny_model


class Tok:
    pad_token_id, eos_token_id, chat_template = 0, 1, None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids.tolist()))


def ids(n, seed):
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("llama", "eager"), ("gemma3", "sdpa")])
def test_questions_do_not_pollute_and_match_fresh_runs(family, attn):
    model = tiny_model(family, attn)
    context, q1, q2 = ids(200, 1), ids(7, 2), ids(5, 3)
    # B >= n: answers equal plain generation of the whole prompt
    pipe = Pipeline(model, Tok(), "dynamickv", 512)
    ctx = pipe.prefill(context)
    for q in (q1, q2, q1):
        ref = model.generate(torch.cat([context, q], -1), max_new_tokens=6, do_sample=False)
        assert pipe.answer(ctx, q, 6) == Tok().decode(ref[0, 200 + q.shape[1] :])
    # compressed, ragged layers: the second question is unaffected by the first
    pipe = Pipeline(model, Tok(), "pyramidkv", 48)
    ctx = pipe.prefill(context)
    before = [layer.keys.shape for layer in ctx.cache.layers]
    a2 = pipe.answer(ctx, q2, 6)
    pipe.answer(ctx, q1, 6)
    assert pipe.answer(ctx, q2, 6) == a2
    assert [layer.keys.shape for layer in ctx.cache.layers] == before


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["pyramidkv", "adakv"])
def test_multi_token_extension_equals_token_by_token(attn, method):
    """Layers of different lengths (PyramidKV), or KV heads of different lengths in a packed layer
    read through a padded view and a key mask (Ada-KV), take a several-token question with a
    right-aligned mask: the result must equal feeding the question one token at a time."""
    model = tiny_model("llama", attn)
    pipe = Pipeline(model, Tok(), method, 48, window=8)
    ctx = pipe.prefill(ids(200, 4))
    counts = {tuple(layer.kept_counts().flatten().tolist()) for layer in ctx.cache.layers}
    assert len(counts) > 1  # ragged
    q = ids(9, 5)
    with pipe.compressor, torch.no_grad():
        whole = model(input_ids=q, past_key_values=fork_cache(ctx.cache)).logits
        cache = fork_cache(ctx.cache)
        steps = torch.cat(
            [model(input_ids=q[:, i : i + 1], past_key_values=cache).logits for i in range(9)], 1
        )
    torch.testing.assert_close(whole, steps, atol=1e-4, rtol=1e-4)


def test_empty_inputs_rejected():
    pipe = Pipeline(tiny_model("llama"), Tok(), "snapkv", 64)
    with pytest.raises(InputError):
        pipe.prefill(torch.zeros(1, 0, dtype=torch.long))
    ctx = pipe.prefill(ids(100, 1))
    with pytest.raises(InputError):
        pipe.answer(ctx, torch.zeros(1, 0, dtype=torch.long))


def test_contexts_it_cannot_answer_are_refused_not_stale():
    # a 1-token context is a decode step to the model: nothing is compressed, and the stats of the
    # previous context would be returned; a batch of two would fail only in answer()
    pipe = Pipeline(tiny_model("llama"), Tok(), "snapkv", 64)
    pipe.prefill(ids(100, 1))
    for bad, message in (
        (ids(1, 2), "at least 2 are needed"),
        (torch.cat([ids(60, 3), ids(60, 4)]), r"one context.*\[2, 60\]"),
        (ids(60, 5)[None], r"one context.*\[1, 1, 60\]"),
    ):
        with pytest.raises(InputError, match=message):
            pipe.prefill(bad)

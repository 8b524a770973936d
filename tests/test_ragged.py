"""Per-row budgets in left-padded batches and the packed ragged layer: every row answers as it does
alone, keeps ``min(B, its length)``, and the cache holds no padding."""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import cache_bytes, compressed_layers
from dynamickv.pipeline import Pipeline
from dynamickv.ragged import RaggedLayer
from test_pipeline import Tok
from tiny import one_thread, tiny_model

SHORT, LONG = 37, 429
STEPS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def _prompts():
    g = torch.Generator().manual_seed(11)
    return torch.randint(3, 256, (SHORT,), generator=g), torch.randint(3, 256, (LONG,), generator=g)


def _left_padded(rows):
    n = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :] = r
        mask[i, n - len(r) :] = 1
    return ids, mask


def _generate(model, ids, mask=None):
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=STEPS,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences[:, ids.shape[-1] :], torch.stack(out.scores, 1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "spec,budget",
    [
        ("streamingllm", 512),
        ("streamingllm", 64),
        ("h2o", 512),
        ("h2o", 64),
        ("snapkv", 64),
        ("pyramidkv", 64),
        ("windowkv:mode=localization", 64),
        ("windowkv:mode=aggregation", 512),
        ("adakv", 64),
        ("h2o:window=4", "25%"),
        ("dynamickv:rows=separate", 64),
        ("dynamickv:rows=separate", 512),
        ("dynamickv:rows=separate;pooling=forward;kernel=12;min_ratio=0.5", 64),
        ("dynamickv:rows=separate;heads=adaptive", 64),
    ],
)
def test_each_row_answers_as_alone(attn, spec, budget):
    """Prompts of 37 and 429 tokens in one left-padded batch: each row's logits and greedy tokens equal
    the row run alone; each row keeps min(B, its own length) per layer per KV head."""
    model = tiny_model("llama", attn, seed=1)
    rows = _prompts()
    ids, mask = _left_padded(rows)
    with compress(model, spec, budget) as comp:
        tokens, scores = _generate(model, ids, mask)
        stats = comp.stats
        alone = []
        for r in rows:
            alone.append(_generate(model, r.view(1, -1)))
            alone[-1] += (comp.stats.kept_per_row_layer[0],)
    for i in range(2):
        assert torch.equal(tokens[i], alone[i][0][0]), (spec, i)
        torch.testing.assert_close(scores[i], alone[i][1][0], atol=1e-4, rtol=1e-4)
        assert stats.kept_per_row_layer[i] == alone[i][2]  # the row keeps what it keeps alone
    if not spec.startswith(("pyramidkv", "windowkv")) and budget == 512:
        assert stats.kept_per_row_layer == [[SHORT] * 8, [LONG] * 8]  # min(B, length), not the shortest
    if spec in ("h2o", "snapkv", "adakv", "streamingllm") and budget == 64:
        assert stats.kept_per_row_layer == [[SHORT] * 8, [64] * 8]
    assert stats.padding_tokens == 0


def test_the_old_shared_count_would_be_wrong():
    """Guard that the comparison above can fail: the long row keeping only 37 tokens answers
    differently from the long row alone at B = 512."""
    model = tiny_model("llama", seed=1)
    long_row = _prompts()[1].view(1, -1)
    full = _generate(model, long_row)[1]
    with compress(model, "snapkv", SHORT, window=8):
        clipped = _generate(model, long_row)[1]
    assert (full - clipped).abs().max() > 1e-2


def test_batch_memory_is_what_rows_keep():
    model = tiny_model("llama", seed=1)
    ids, mask = _left_padded(_prompts())
    with compress(model, "snapkv", 64) as comp:
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    layers = compressed_layers(cache)
    assert all(isinstance(layer, RaggedLayer) for layer in layers.values())
    per_layer = (SHORT + 64) * 2  # row tokens x KV heads
    d = model.config.head_dim
    assert cache_bytes(cache) == per_layer * len(layers) * d * 2 * 4
    assert comp.stats.padding_tokens == 0
    assert comp.stats.rectangular_padding_tokens == (64 - SHORT) * 2 * len(layers)


def test_row_selection_ops_keep_each_rows_tokens():
    """``batch_select_indices`` / ``batch_repeat_interleave`` / ``reorder_cache`` (beam search, contrastive
    search) move whole rows of a packed layer."""
    model = tiny_model("llama", seed=1)
    ids, mask = _left_padded(_prompts())
    with compress(model, "adakv", 64):
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    layer = compressed_layers(cache)[0]
    rows = [layer.kept_positions(r) for r in range(2)]
    counts = layer.kept_counts()
    picked = layer.fork(type(layer.group)())
    picked.batch_select_indices(torch.tensor([1]))
    assert picked.kept_positions(0) == rows[1] and torch.equal(picked.kept_counts(), counts[1:])
    repeated = layer.fork(type(layer.group)())
    repeated.batch_repeat_interleave(2)
    assert [repeated.kept_positions(r) for r in range(4)] == [rows[0], rows[0], rows[1], rows[1]]
    keys, _, valid = layer.padded_prompt()
    swapped = layer.fork(type(layer.group)())
    swapped.reorder_cache(torch.tensor([1, 0]))
    keys2, _, valid2 = swapped.padded_prompt()
    assert torch.equal(keys2[0][valid2[0]], keys[1][valid[1]])
    assert sum(t.numel() for t in picked.held_tensors()) < sum(t.numel() for t in layer.held_tensors())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pipeline_on_head_adaptive_cache(attn):
    """Forks share the packed tensors and questions never pollute the shared cache."""

    model = tiny_model("llama", attn, seed=1)
    g = torch.Generator().manual_seed(4)
    context = torch.randint(3, 256, (1, 200), generator=g)
    q1, q2 = torch.randint(3, 256, (1, 7), generator=g), torch.randint(3, 256, (1, 5), generator=g)
    pipe = Pipeline(model, Tok(), "adakv", 48, window=8)
    ctx = pipe.prefill(context)
    assert all(isinstance(layer, RaggedLayer) for layer in ctx.cache.layers)
    held = cache_bytes(ctx.cache)
    a2 = pipe.answer(ctx, q2, 6)
    pipe.answer(ctx, q1, 6)
    assert pipe.answer(ctx, q2, 6) == a2 and cache_bytes(ctx.cache) == held
    # several-token questions over the padded view: tests/test_pipeline.py (method "adakv")


@pytest.mark.slow
def test_smollm2_batch_rows_answer_as_alone(smollm2):
    """The issue's case on the real model: a 37-token and a ~429-token needle prompt in one batch at
    B = 512 and B = 64; each row's greedy answer equals its answer alone."""
    from dynamickv.report import needle_prompt

    model, tok = smollm2
    context, question, _ = needle_prompt(tok, 380)

    def chat(text):
        msgs = [{"role": "user", "content": text}]
        return tok.apply_chat_template(
            msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    rows = [
        chat("What is 5 + 6? Answer with a number.")["input_ids"][0],
        chat(context + "\n\n" + question)["input_ids"][0],
    ]
    assert len(rows[0]) < 64 < 400 < len(rows[1])
    ids, mask = _left_padded(rows)
    for budget in (512, 64):
        with compress(model, "snapkv", budget, window=8) as comp:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
            kept = comp.stats.kept_per_row_layer
            alone = [
                model.generate(input_ids=r.view(1, -1), max_new_tokens=16, do_sample=False)[0] for r in rows
            ]
        for i, r in enumerate(rows):
            answer = alone[i][len(r) :].tolist()
            got = out[i, ids.shape[-1] :].tolist()
            assert got[: len(answer)] == answer, (budget, i, tok.decode(got), tok.decode(answer))
            assert set(got[len(answer) :]) <= {tok.eos_token_id, tok.pad_token_id}  # finished rows pad
        assert kept[1][0] == min(budget, len(rows[1])) and kept[0][0] == len(rows[0])
        if budget == 512:
            assert "742" in tok.decode(out[1, ids.shape[-1] :])  # the needle, as alone

"""Sliding-window checkpoints (Mistral-7B-v0.1, Phi-3-mini): every layer slides, every layer is compressed.

What users rely on: ``B >= n`` answers exactly as the uncompressed model, also after decoding past the
window; kept tokens are chosen among the positions the layer can still attend to; a compressed cache
decodes as the model would with only the kept tokens (each leaving the window at its own position).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import MistralConfig, Phi3Config

from dynamickv import compress
from dynamickv.cache import CompressedLayer, cache_kwarg, compressed_layers, fork_cache
from dynamickv.compressor import compressed_window, compressible_layers
from dynamickv.errors import UnsupportedModelError
from dynamickv.key_mask import attach_key_mask
from dynamickv.methods import METHODS
from tiny import one_thread, tiny_model

W = 48  # the tiny models' window: prompts of 40 (inside it) and 100 tokens (past it)
SLIDING = ["mistral", "phi3"]
_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def sliding_model(family: str, attn: str = "sdpa"):
    return tiny_model(family, attn, sliding_window=W)


def prompt(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_real_configurations_compress_every_layer():
    """The checkpoints the issue names: refused before, now every layer is compressed with its window."""
    mistral = MistralConfig(num_hidden_layers=32, sliding_window=4096)  # Mistral-7B-v0.1
    phi3 = Phi3Config(num_hidden_layers=32, sliding_window=2047, max_position_embeddings=4096)
    for config, window in ((mistral, 4096), (phi3, 2047)):
        model = SimpleNamespace(config=config)
        layers = compressible_layers(model)
        assert layers == list(range(32))
        assert compressed_window(model, layers) == window
    gemma = tiny_model("gemma3")  # interleaved local layers stay uncompressed, as before
    assert compressible_layers(gemma) == [1, 3, 5, 7] and compressed_window(gemma, [1, 3, 5, 7]) is None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", SLIDING)
@pytest.mark.parametrize("n", [40, 100])
def test_budget_covering_the_prompt_equals_uncompressed(family, attn, n):
    """``B >= n``: identical tokens to the uncompressed sliding model, decoding past the window (a
    40-token prompt decoded to position 64 > W; a 100-token prompt is past it from the start)."""
    model = sliding_model(family, attn)
    ids = prompt(n)
    steps = 24
    ref = model.generate(ids, max_new_tokens=steps, do_sample=False)
    for name in METHODS:
        with compress(model, name, n) as c:
            out = model.generate(ids, max_new_tokens=steps, do_sample=False)
        assert torch.equal(out, ref), name
        assert c.stats.kept_per_layer == [min(n, W - 1)] * 8, name  # what the layer can still see


@pytest.mark.parametrize("family", SLIDING)
def test_selection_stays_inside_the_window_and_budgets_add_up(family):
    model = sliding_model(family)
    n, budget = 100, 40
    ids = prompt(n, seed=2)
    for name in METHODS:
        if getattr(METHODS[name](), "heads", "uniform") == "adaptive":
            # per-head counts on a sliding layer: refused in one line rather than decoded wrongly
            with pytest.raises(UnsupportedModelError, match="sliding-window layers are not supported"):
                with compress(model, name, budget):
                    model(ids, use_cache=True)
            continue
        with compress(model, name, budget) as c:
            cache = model(ids, use_cache=True).past_key_values
        layers = compressed_layers(cache)
        assert list(layers) == list(range(8))
        for layer in layers.values():
            assert int(layer.positions.min()) >= n - W + 1, name  # never a token the layer cannot see
            assert layer.prompt_kept <= W - 1
        kept = c.stats.kept_per_layer
        if name == "fullkv":
            assert kept == [W - 1] * 8
        elif name == "windowkv":  # whole windows: one straddling the window's edge is never chosen
            assert budget * 8 - 8 * 8 <= sum(kept) <= budget * 8
        else:
            assert sum(kept) == budget * 8, name  # B is the average, window included
        if name in ("snapkv", "h2o", "streamingllm"):
            assert kept == [budget] * 8


class _WindowReference(CompressedLayer):
    """The plain rule, no eviction: a query at position t sees the stored keys at positions > t - W."""

    reference_window: int

    def update(self, key_states, value_states, *args, **kwargs):
        first, generated = self.seen, self.keys.shape[-2] - self.prompt_kept
        keys, values = super().update(key_states, value_states)
        b, h, _ = self.positions.shape
        q = key_states.shape[-2]
        recent = torch.arange(first - generated, first + q).expand(b, h, -1)
        pos = torch.cat([self.positions, recent], dim=-1)
        qpos = torch.arange(first, first + q)
        return attach_key_mask(
            keys, pos[:, :, None, :] > (qpos - self.reference_window).view(1, 1, q, 1)
        ), values


def _decode(model, cache, logits, steps):
    """Greedy decoding from a compressed cache (inside a block: the wrapper aligns the masks)."""
    out = [logits]
    with compress(model, "fullkv", 1):
        for _ in range(steps):
            token = out[-1].argmax(-1, keepdim=True)
            out.append(model(input_ids=token, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1])
    return torch.stack(out[1:], 1)


@pytest.mark.parametrize("family", SLIDING)
@pytest.mark.parametrize(
    "name,n", [("snapkv", 100), ("dynamickv", 100), ("streamingllm", 100), ("snapkv", 40)]
)
def test_compressed_decoding_matches_the_window_rule(family, name, n):
    """Decoding a compressed sliding cache (masks per KV head, freed columns) gives the logits of the
    plain rule on the same kept tokens, computed without the model's sliding mask; ignoring the window
    gives other logits, so the rule matters here."""
    model = sliding_model(family)
    ids = prompt(n, seed=3)
    with compress(model, name, 16, **({"window": 4} if name != "streamingllm" else {})):
        out = model(ids, use_cache=True, logits_to_keep=1)
    cache, first = out.past_key_values, out.logits[:, -1]
    reference, unwindowed = fork_cache(cache), fork_cache(cache)
    for i in compressed_layers(cache):
        layer = reference.layers[i]
        layer.__class__, layer.sliding_window, layer.reference_window = _WindowReference, None, W
        unwindowed.layers[i].sliding_window = None
    steps = 40  # every kept prompt token leaves the window
    got = _decode(model, cache, first, steps)
    assert max(layer.keys.shape[-2] for layer in cache.layers) <= W - 1  # freed as they leave
    model.config.sliding_window = None  # the reference: causal masks only, the window from positions
    try:
        want = _decode(model, reference, first, steps)
        ignored = _decode(model, unwindowed, first, steps)
    finally:
        model.config.sliding_window = W
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, ignored, atol=1e-3)


@pytest.mark.parametrize("family", SLIDING)
def test_multi_token_continuation_respects_the_window(family):
    """A question appended after compression (several tokens in one forward) sees, per token, what
    it would see token by token."""
    model = sliding_model(family)
    ids, question = prompt(100, seed=4), prompt(30, seed=5)
    with compress(model, "snapkv", 16, window=4):
        cache = model(ids, use_cache=True).past_key_values
        kw = cache_kwarg(model)
        block = model(input_ids=question, use_cache=True, **{kw: fork_cache(cache)}).logits
        single, step_cache = [], fork_cache(cache)
        for t in range(question.shape[-1]):
            single.append(model(input_ids=question[:, t : t + 1], use_cache=True, **{kw: step_cache}).logits)
    torch.testing.assert_close(block, torch.cat(single, 1), atol=1e-4, rtol=1e-4)


def test_padded_batch_with_budget_covering_the_prompt_equals_uncompressed():
    """Left padding on a sliding model (the window counts cache columns, as in transformers)."""
    model = sliding_model("mistral")
    long_ids, short_ids = prompt(100, seed=7), prompt(70, seed=8)
    ids = torch.cat([long_ids, torch.cat([torch.zeros(1, 30, dtype=torch.long), short_ids], 1)], 0)
    mask = torch.ones_like(ids)
    mask[1, :30] = 0
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    for name in ("snapkv", "streamingllm", "dynamickv"):
        with compress(model, name, 100):
            out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        assert torch.equal(out, ref), name


@pytest.mark.parametrize("mode", ["plain", "fused"])
def test_static_decoder_forgets_what_leaves_the_window(mode):
    """Kept tokens leave a compressed sliding layer's window while decoding (per KV head, by their
    original positions), in the static buffers as in ``generate``; 60 new tokens also push the first
    generated ones out of the window (48)."""
    from dynamickv.fast import StaticDecoder

    model = sliding_model("mistral")
    ids = prompt(100)
    with compress(model, "snapkv", 40):
        ref = model.generate(ids, max_new_tokens=60, do_sample=False)[:, 100:]
        out = model(ids, use_cache=True, logits_to_keep=1)
    decoder = StaticDecoder(model, out.past_key_values, max_new_tokens=60, graph=False, mode=mode)
    assert decoder.decoder.mode == mode
    assert torch.equal(decoder.generate(out.logits[:, -1].argmax(-1), 60), ref)

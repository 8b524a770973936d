"""Batched decoding of requests prefilled apart: each row's greedy answer equals that request alone.

The requests have different lengths and DynamicKV keeps different per-layer counts for each, so the
rows of one layer hold ragged prompts; one row stops early at EOS, and with continuous batching a
request joins a row another one freed. A cache layer with per-(row, KV head) holes (the interface a
head-adaptive layer implements) decodes as if the holes were dropped.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import CompressedLayer, cache_kwarg, compressed_layers, fork_cache, output_cache
from dynamickv.decode_step import layer_weights
from dynamickv.errors import InputError, UnsupportedModelError
from dynamickv.key_mask import attach_key_mask
from dynamickv.serving import BatchDecoder, parse_mode, serve
from tiny import one_thread, tiny_model

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

LENGTHS = (150, 230, 310)
#: The ``splitkv`` attention needs Triton (in CI, its CPU interpreter; see conftest.py).
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)


def _prompts(lengths=LENGTHS, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g) for n in lengths]


def _alone(model, ids, method, budget, new, eos=None):
    """Reference: ``generate`` on this request alone, under compression."""
    with compress(model, method, budget):
        out = model.generate(
            ids.view(1, -1), max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=0
        )
    return out[0, ids.numel() :]


def _prefill(model, ids, method, budget):
    comp = compress(model, method, budget)
    with torch.inference_mode(), comp:
        out = model(input_ids=ids.view(1, -1), use_cache=True, logits_to_keep=1)
    return output_cache(out), out.logits[:, -1].argmax(-1), comp.stats.kept_per_layer


@pytest.mark.parametrize(
    "family,mode",
    [
        ("llama", "plain"),
        ("llama", "fused"),
        ("llama", "functional"),
        ("qwen2", "fused"),
        ("qwen3", "fused"),
        ("phi3", "fused"),
        ("qwen3", "plain"),
        ("gemma3", "plain"),  # local layers (window 32) stay uncompressed and slide while decoding
        ("llama", "fused:matmul"),
        ("qwen3", "fused:flex"),
        pytest.param("llama", "fused:splitkv", marks=needs_triton),
        pytest.param("qwen3", "fused:splitkv", marks=needs_triton),
    ],
)
def test_batched_rows_equal_each_request_alone(family, mode):
    model = tiny_model(family)
    prompts = _prompts()
    free_run = _alone(model, prompts[1], "dynamickv", 48, 12)
    eos = int(free_run[4])  # request 1 stops early, at its 5th token (or before)
    refs = [_alone(model, ids, "dynamickv", 48, 12, eos=eos) for ids in prompts]
    assert len(refs[1]) <= 5 < len(free_run)

    decoder = _decoder(model, rows=3, max_new_tokens=12, eos_token_id=eos, mode=mode)
    kept = []
    for ids in prompts:
        cache, first, counts = _prefill(model, ids, "dynamickv", 48)
        decoder.add(cache, first)
        kept.append(counts)
    assert kept[0] != kept[1] != kept[2]  # ragged: per-layer counts differ between requests
    decoder.run(sync_every=3)
    got = [decoder.pop(row) for row in range(3)]
    for row, ref in zip(got, refs, strict=True):
        assert torch.equal(row, ref)


def _assert_rows_equal(decoder, model, prompts, refs, method, budget) -> None:
    """Each prompt prefilled alone into ``decoder``, all decoded together: row ``i`` equals ``refs[i]``."""
    for ids in prompts:
        cache, first, _ = _prefill(model, ids, method, budget)
        decoder.add(cache, first)
    decoder.run()
    for row, ref in enumerate(refs):
        assert torch.equal(decoder.pop(row), ref)


def _decoder(model, mode: str, **kwargs) -> BatchDecoder:
    """A decoder for ``mode``, optionally ``mode:attention``."""
    step, attention = parse_mode(mode)
    return BatchDecoder(model, mode=step, attention=attention, **kwargs)


def test_sliding_layers_forget_what_leaves_their_window():
    """Gemma 3's uncompressed local layers (window 32) in the static buffers: prompt tokens leave the
    window one per step and, past 32 new tokens, the first generated ones too, as in ``generate``."""
    model = tiny_model("gemma3")
    prompts = _prompts((150, 20))  # the second prompt is shorter than the window
    new = 45
    refs = [_alone(model, ids, "snapkv:window=8", 24, new) for ids in prompts]
    decoder = BatchDecoder(model, rows=2, max_new_tokens=new)
    assert decoder.mode == "plain" and decoder.windows == [32, None] * 4
    _assert_rows_equal(decoder, model, prompts, refs, "snapkv:window=8", 24)
    with pytest.raises(UnsupportedModelError, match="the fused decode step supports"):  # not Gemma 3
        BatchDecoder(model, rows=1, max_new_tokens=2, mode="fused")
    with pytest.raises(UnsupportedModelError, match="one request per cache"):
        with compress(model, "snapkv:window=8", 24):
            two = model(input_ids=torch.stack([prompts[0][:20], prompts[1]]), use_cache=True)
        BatchDecoder(model, rows=2, max_new_tokens=2).add(output_cache(two), two.logits[:, -1].argmax(-1))


def test_joining_requests_get_their_own_answers():
    model = tiny_model("llama")
    prompts = _prompts((140, 260, 180, 220, 300), seed=5)
    new = [3, 10, 6, 8, 5]
    got = serve(model, prompts, "dynamickv", 48, rows=2, max_new_tokens=new, sync_every=2)
    for ids, n, row in zip(prompts, new, got, strict=True):
        assert torch.equal(row, _alone(model, ids, "dynamickv", 48, n))


class _Holes(CompressedLayer):
    """A compressed layer whose prompt view has per-(row, head) holes and trailing padding, with
    junk in the hidden slots (as a head-adaptive layer's padded view may have)."""

    hidden: torch.Tensor  # [b, h, prompt_kept] bool: slots hidden from that head

    def padded_prompt(self):
        keys, values, _ = super().padded_prompt()
        pad = torch.full_like(keys[:, :, :3], 50.0)
        junk = torch.randn(keys.shape, generator=torch.Generator().manual_seed(0)) * 50
        keys = torch.cat([torch.where(self.hidden.unsqueeze(-1), junk, keys), pad], dim=2)
        values = torch.cat([torch.where(self.hidden.unsqueeze(-1), junk, values), pad], dim=2)
        valid = torch.cat([~self.hidden, torch.zeros_like(self.hidden[..., :3])], dim=2)
        return keys, values, valid

    def update(self, key_states, value_states, *args, **kwargs):  # the eager reference's view
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        mask = torch.ones(keys.shape[:3], dtype=torch.bool)
        mask[..., : self.prompt_kept] = ~self.hidden
        return attach_key_mask(keys, mask), values


def _holed(cache, ignore_valid=False):
    out = fork_cache(cache)
    for i, layer in compressed_layers(cache).items():
        h = layer.keys.shape[1]
        hidden = torch.zeros(1, h, layer.prompt_kept, dtype=torch.bool)
        hidden[0, 0, [1, 7, 20]] = True  # head 0 loses three slots, head 1 one other
        hidden[0, 1, [3]] = True
        holed = _Holes.__new__(_Holes)
        holed.__dict__.update(out.layers[i].__dict__)
        holed.hidden = hidden
        if ignore_valid:  # the junk in plain sight: what a decoder ignoring `valid` would see
            k, v, _ = holed.padded_prompt()
            holed = CompressedLayer(
                k, v, torch.zeros(k.shape[:3], dtype=torch.long), layer.seen, out.layers[i].group
            )
        out.layers[i] = holed
    return out


def _greedy(model, cache, first, steps):
    tokens, tok = [int(first)], first.view(1, 1)
    with compress(model, "fullkv", 1), torch.inference_mode():
        for _ in range(steps - 1):
            logits = model(input_ids=tok, use_cache=True, **{cache_kwarg(model): cache}).logits
            tok = logits[:, -1:].argmax(-1)
            tokens.append(int(tok))
    return torch.tensor(tokens)


@pytest.mark.parametrize(
    "mode",
    ["plain", "fused", "fused:matmul", "fused:flex", pytest.param("fused:splitkv", marks=needs_triton)],
)
def test_per_head_holes_decode_as_if_dropped(mode):
    model = tiny_model("llama")
    cache, first, _ = _prefill(model, _prompts((200,))[0], "snapkv", 40)
    ref = _greedy(model, _holed(cache), first, 10)
    decoder = _decoder(model, rows=2, max_new_tokens=10, mode=mode)
    decoder.add(_holed(cache), first)
    decoder.run()
    assert torch.equal(decoder.pop(0), ref)
    # the test can fail: with the junk visible the answer changes
    blind = _decoder(model, rows=1, max_new_tokens=10, mode=mode)
    blind.add(_holed(cache, ignore_valid=True), first)
    blind.run()
    assert not torch.equal(blind.pop(0), ref)


def test_fusing_projections_keeps_the_model_and_its_memory():
    model = tiny_model("llama")
    ids = _prompts((60,))[0].view(1, -1)
    before = model(input_ids=ids).logits
    params = sum(p.numel() for p in model.parameters())
    weights = layer_weights(model)
    attn = model.model.layers[0].self_attn
    assert weights[0].qkv.data_ptr() == attn.q_proj.weight.data_ptr()
    assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + attn.q_proj.weight.nbytes
    assert torch.equal(model(input_ids=ids).logits, before)
    assert sum(p.numel() for p in model.parameters()) == params
    again = layer_weights(model)  # idempotent: already adjacent weights are viewed, not copied
    assert again[0].qkv.data_ptr() == weights[0].qkv.data_ptr()


def test_rows_grow_for_a_larger_request_and_errors_are_clear():
    model = tiny_model("llama")
    small, first_s, _ = _prefill(model, _prompts((120,))[0], "snapkv", 40)
    big_ids = _prompts((200,), seed=3)[0]
    big, first_b, _ = _prefill(model, big_ids, "snapkv", 64)
    decoder = BatchDecoder(model, rows=2, max_new_tokens=6, prompt_slots=40)
    decoder.add(small, first_s)
    decoder.add(big, first_b)  # 64 kept tokens > 40 slots: the buffers grow, row 0 is kept
    assert decoder.prompt_slots == [64] * 8
    decoder.run()
    assert torch.equal(decoder.pop(1), _alone(model, big_ids, "snapkv", 64, 6))
    with pytest.raises(InputError, match="rows requested"):
        decoder.add(big, first_b, copies=2)
    with pytest.raises(InputError, match="max_new_tokens"):
        decoder.add(big, first_b, max_new_tokens=7)
    with pytest.raises(InputError, match="unknown decode mode"):
        BatchDecoder(model, rows=1, max_new_tokens=2, mode="turbo")
    with pytest.raises(
        InputError, match="unknown decode attention 'flash'; known: sdpa, matmul, flex, splitkv"
    ):
        BatchDecoder(model, rows=1, max_new_tokens=2, mode="fused", attention="flash")


@pytest.mark.parametrize("attention", ["sdpa", "matmul", "flex", pytest.param("splitkv", marks=needs_triton)])
def test_compiled_steps_give_each_request_its_own_answer(attention):
    """``torch.compile`` of the step (each attention kernel) keeps greedy tokens equal to decoding
    each request alone, with ragged per-layer counts and rows of different lengths."""
    model = tiny_model("llama")
    prompts = _prompts((150, 310))
    refs = [_alone(model, ids, "dynamickv", 48, 8) for ids in prompts]
    decoder = BatchDecoder(model, rows=2, max_new_tokens=8, mode="compiled", attention=attention)
    _assert_rows_equal(decoder, model, prompts, refs, "dynamickv", 48)


def test_compiled_steps_of_several_kernels_stay_compiled():
    """Each compiled step keeps its own graphs: a second one compiled in the same process (another
    attention kernel, or another model shape) does not push the first one's count past Dynamo's
    limit, where Dynamo would run it uncompiled, silently (every compiled ``functools.partial``
    shares one wrapper's count)."""
    import torch._dynamo

    model = tiny_model("llama")
    ids = _prompts((310,))[0]
    ref = _alone(model, ids, "dynamickv", 48, 4)
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for attention in ("sdpa", "matmul"):
            decoder = BatchDecoder(model, rows=1, max_new_tokens=4, mode="compiled", attention=attention)
            cache, first, kept = _prefill(model, ids, "dynamickv", 48)
            assert len(set(kept)) > 1  # ragged layers: a static graph, then a dynamic one
            decoder.add(cache, first)
            decoder.run()
            assert torch.equal(decoder.pop(0), ref)


def test_forced_logits_follow_the_fed_tokens():
    """Fed its own greedy tokens, a decoder's forced logits pick them again; fed other tokens, every
    mode computes the same logits as the plain path on that same history."""
    model = tiny_model("llama")
    ids = _prompts((230,))[0]
    free = _decoder(model, "fused", rows=1, max_new_tokens=8)
    cache, first, _ = _prefill(model, ids, "dynamickv", 48)
    free.add(cache, first)
    free.run()
    own = free.pop(0)[1:]
    other = torch.randint(3, 256, own.shape, generator=torch.Generator().manual_seed(3))
    for fed in (own, other):
        logits = {}
        for mode in ("plain", "fused"):
            decoder = BatchDecoder(model, rows=1, max_new_tokens=own.numel() + 2, mode=mode)
            cache, first, _ = _prefill(model, ids, "dynamickv", 48)
            decoder.add(cache, first)
            logits[mode] = decoder.forced_logits(fed.view(-1, 1))[:, 0]
        assert logits["plain"].shape == (own.numel(), model.config.vocab_size)
        torch.testing.assert_close(logits["fused"], logits["plain"], rtol=1e-4, atol=1e-4)
        if fed is own:
            assert torch.equal(logits["plain"].argmax(-1), own)
    assert not torch.equal(logits["plain"].argmax(-1), own)  # the history changed the logits


def _bf16_qkv(seed: int, b: int, kv_heads: int, group: int, slots: int, d: int):
    """A query token per row and a bf16 cache, as the decoder's buffers hold them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, kv_heads * group, 1, d, generator=g).bfloat16()
    k = (torch.randn(b, kv_heads, slots, d, generator=g) * 2).bfloat16()
    v = torch.randn(b, kv_heads, slots, d, generator=g).bfloat16()
    return q, k, v


def _float32_attention(q, k, v, mask, scale: float, round_probs: bool = False):
    """Reference: attention in float32 of the same values (the weights rounded to bf16 on request)."""
    b, heads, _, d = q.shape
    kv_heads = k.shape[1]
    grouped = q.float().reshape(b, kv_heads, heads // kv_heads, d)
    probs = ((grouped @ k.float().transpose(-1, -2)) * scale + mask).softmax(-1)
    if round_probs:
        probs = probs.bfloat16().float()
    return (probs @ v.float()).reshape(b, heads, 1, d)


def test_matmul_attention_keeps_float32_probabilities_in_bf16():
    """The ``matmul`` kernel's bf16 path weights the values by float32 probabilities (split into two
    bf16 parts): against float32 attention on the same bf16 inputs it is as close as the output's own
    rounding allows, and closer than weighting by probabilities rounded to bf16, compiled too."""
    from dynamickv.decode_step import matmul_attention

    b, kv_heads, slots, d = 2, 2, 700, 64
    q, k, v = _bf16_qkv(5, b, kv_heads, 4, slots, d)
    mask = torch.zeros(b, kv_heads, 1, slots)
    mask[..., 500:] = torch.finfo(torch.float32).min  # holes, as the decoder's slot mask makes them
    exact = _float32_attention(q, k, v, mask, d**-0.5)
    rounded = _float32_attention(q, k, v, mask, d**-0.5, round_probs=True)

    compiled = torch.compile(matmul_attention, fullgraph=True)  # must not fold the split away
    for fn in (matmul_attention, compiled):
        out = fn(q, k, v, mask.bfloat16(), d**-0.5)
        assert out.dtype == torch.bfloat16
        assert ((out.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
        assert (out.float() - exact).abs().mean() < (rounded.bfloat16().float() - exact).abs().mean()


@needs_triton
@pytest.mark.parametrize("programs", [256, 1], ids=["chunks", "one-chunk"])
@pytest.mark.parametrize("group,head_dim,slots", [(4, 64, 700), (1, 80, 130), (7, 32, 64)])
def test_splitkv_attention_is_float32_attention_of_the_bf16_cache(
    group, head_dim, slots, programs, monkeypatch
):
    """The Triton split-KV kernel against float32 attention of the same bf16 values: with holes, a
    row whose only visible slot is the last, chunks with nothing visible, a head size that is not a
    power of two and group sizes from 1 to 7. Computed in float32 it equals float32 attention to
    float32 accuracy (the softmax weights are never rounded); from bf16 buffers it differs only by
    the output's rounding to bf16 (one unit in the last place: the CPU interpreter truncates) and
    the 16 bits its weights keep (two bf16 parts on the tensor cores).
    ``one-chunk``: each program walks all its row's slots (large batches), not one tile of them."""
    from dynamickv import splitkv

    monkeypatch.setattr(splitkv, "TARGET_PROGRAMS", programs)
    splitkv_attention = splitkv.splitkv_attention

    b, kv_heads = 2, 2
    q, k, v = _bf16_qkv(slots, b, kv_heads, group, slots, head_dim)
    low = torch.finfo(torch.bfloat16).min
    mask = torch.zeros(b, kv_heads, 1, slots)
    mask[..., slots // 3 : slots // 3 + 40] = low
    mask[0, 1, 0, :] = low
    mask[0, 1, 0, slots - 1] = 0.0  # only the last slot is visible
    exact = _float32_attention(q, k, v, mask, 0.1)

    out32 = splitkv_attention(q.float(), k.float(), v.float(), mask, 0.1)
    torch.testing.assert_close(out32, exact, rtol=1e-5, atol=1e-6)
    out = splitkv_attention(q, k, v, mask.bfloat16(), 0.1)
    assert out.dtype == torch.bfloat16 and out.shape == exact.shape
    # bf16 weights (high + low part: 16 significant bits, 14 where the interpreter truncates)
    # times values of at most |v|, then the output's last place
    magnitude = _float32_attention(q, k, v.abs(), mask, 0.1)
    assert ((out.float() - exact).abs() <= exact.abs() * 2**-7 + magnitude * 2**-14).all()
    assert torch.equal(out[0, group : 2 * group], v[0, 1, -1].expand(group, 1, -1))


def test_splitkv_needs_triton_on_a_gpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = tiny_model("llama")
    with pytest.raises(
        InputError, match=r"decode attention 'splitkv' cannot run here: .*; use sdpa or matmul"
    ):
        BatchDecoder(model, rows=1, max_new_tokens=2, mode="fused", attention="splitkv")


@pytest.mark.parametrize(
    "prompts,options,message",
    [
        ([], {}, "no prompts to serve"),
        (
            [torch.randint(3, 200, (2, 40))],
            {},
            "prompt 0 must be a 1-D tensor of token ids, got a 2-D tensor",
        ),
        ([[5, 6, 7]], {}, "prompt 0 must be a 1-D tensor of token ids, got list"),
        ([torch.tensor([5])], {}, "prompt 0 has 1 token"),
        ([torch.randint(3, 200, (40,))], {"sync_every": 0}, "sync_every and chunk must be at least 1"),
        ([torch.randint(3, 200, (40,))], {"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ],
)
def test_serve_refuses_prompts_and_options_it_would_get_wrong(prompts, options, message):
    # a [2, n] tensor was joined into one prompt, and sync_every=0 decoded nothing, forever
    with pytest.raises(InputError, match=message):
        serve(tiny_model("llama"), prompts, "snapkv-decay", 32, rows=2, **options)

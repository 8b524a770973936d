"""Library misuse gets one clear error (a :class:`UsageError` / :class:`InputError`), never a wrong result:
nested blocks, a static cache, a compressed cache continued outside its block, a block that would
compress nothing (a cache filled outside it, ``use_cache=False``), bad ``Pipeline.ask``
arguments, method parameters that cannot be used."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

from dynamickv import BudgetError, InputError, UsageError, compress, get_method
from dynamickv.cache import cache_kwarg, fork_cache, output_cache
from dynamickv.methods import METHODS, parse_method_spec
from dynamickv.pipeline import Pipeline
from tiny import one_thread, tiny_model, word_tokenizer

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def ids(n=80, seed=1):
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_nested_blocks_are_refused_and_the_model_is_restored(model):
    with compress(model, "snapkv", 48):
        with pytest.raises(UsageError, match="cannot be nested"), compress(model, "dynamickv", 48):
            pass
        assert model.config._attn_implementation == "dynamickv_sdpa"  # the outer block still holds
        out = model.generate(ids(), max_new_tokens=2, do_sample=False)
    assert out.shape[-1] == 82 and model.config._attn_implementation == "sdpa"
    c = compress(model, "snapkv", 48)
    with c, pytest.raises(UsageError, match="already active"), c:
        pass
    with compress(model, "snapkv", 48):  # both left: a new block works
        pass


def test_static_cache_is_refused(model):
    with compress(model, "snapkv", 48), pytest.raises(UsageError, match="static cache"):
        model.generate(ids(), max_new_tokens=2, do_sample=False, cache_implementation="static")
    cache = StaticCache(config=model.config, max_cache_len=128)
    with compress(model, "snapkv", 48), pytest.raises(UsageError, match="static cache"):
        model(input_ids=ids(), use_cache=True, **{cache_kwarg(model): cache})
    assert model.config._attn_implementation == "sdpa"


def test_compressed_cache_is_not_continued_outside_its_block(model):
    kw = cache_kwarg(model)
    with compress(model, "snapkv", 48):
        cache = output_cache(model(input_ids=ids(), use_cache=True))
    token = torch.tensor([[5]])
    with pytest.raises(UsageError, match="inside a `with compress"):
        model(input_ids=token, use_cache=True, **{kw: fork_cache(cache)})
    with pytest.raises(UsageError, match="inside a `with compress"):
        model.generate(torch.cat([ids(), token], -1), max_new_tokens=2, **{kw: fork_cache(cache)})
    with compress(model, "fullkv", 1):  # inside a block it continues
        logits = model(input_ids=token, use_cache=True, **{kw: fork_cache(cache)}).logits
    assert torch.isfinite(logits).all()


def test_nothing_compressed_is_refused_not_passed_through(model):
    """A block whose forward cannot compress says so instead of running uncompressed: a cache filled
    outside the block (continued, it would stay whole) and ``use_cache=False`` (no cache at all)."""
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids(60), use_cache=True, **{kw: cache})
    assert cache.get_seq_length() == 60
    with (
        compress(model, "snapkv", 48) as c,
        pytest.raises(UsageError, match="holds 60 tokens that were not compressed"),
    ):
        model.generate(ids(80), max_new_tokens=2, do_sample=False, **{kw: cache})
    with compress(model, "snapkv", 48), pytest.raises(UsageError, match="holds 60 tokens"):
        model(input_ids=torch.tensor([[5]]), use_cache=True, **{kw: cache})  # a decoding step too
    assert c.stats is None
    with compress(model, "snapkv", 48), pytest.raises(UsageError, match="use_cache=False"):
        model.generate(ids(), max_new_tokens=2, do_sample=False, use_cache=False)
    with compress(model, "snapkv", 48) as c:  # an empty cache passed in is compressed
        empty = DynamicCache(config=model.config)
        model.generate(ids(), max_new_tokens=2, do_sample=False, **{kw: empty})
    assert c.stats.kept_per_layer == [48] * len(c.stats.kept_per_layer)


def test_pipeline_ask_arguments(model):
    tok = word_tokenizer([f"w{i}" for i in range(200)], join_with_spaces=True)
    pipe = Pipeline(model, tok, "snapkv", 48, use_chat_template=False)
    context = " ".join(f"w{i % 200}" for i in range(120))
    with pytest.raises(InputError, match="no questions"):
        pipe.ask(context, [])
    with pytest.raises(InputError, match=r"ask\(context, \[question\]\)"):
        pipe.ask(context, "w1 w2")
    with pytest.raises(InputError, match="must be strings"):
        pipe.ask(context, [3])
    answers = pipe.ask(context, (" w1 w2", " w3"), max_new_tokens=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_every_parameter_of_every_method_is_settable_in_a_spec(model):
    """Each documented parameter (dataclass field) parses from a spec, with its annotated type, and
    the method then runs; parameters whose default is ``None`` (WindowKV's) included."""
    values = {
        "window": "4",
        "kernel": "5",
        "pooling": "avg",
        "beta": "10",
        "r_max": "4",
        "update_every": "2",
        "sinks": "2",
        "mode": "localization",
        "omega": "8",
        "alpha": "16",
        "gamma": "2",
        "lam": "10",
        "heads": "adaptive",
        "head_floor": "0.3",
        "allocation": "candidates",
        "min_ratio": "0.25",
        "min_tokens": "16",
        "normalize": "sum",
        "sink": "2",
        "quiet_sinks": "2",
        "rows": "separate",
        "tau1": "0.5",
        "tau2": "2",
        "families": "llama+qwen2",
    }
    from dataclasses import fields

    for name, cls in METHODS.items():
        params = [f.name for f in fields(cls) if f.name not in cls.unused]
        spec = name + ":" + ";".join(f"{p}={values[p]}" for p in params) if params else name
        key, parsed = parse_method_spec(spec)
        method = get_method(spec)
        for p in params:
            assert getattr(method, p) == parsed[p]
            assert p in (
                "pooling",
                "mode",
                "heads",
                "allocation",
                "normalize",
                "rows",
                "families",
            ) or not isinstance(parsed[p], str)
        with compress(model, spec, 40) as c:
            model.generate(ids(120), max_new_tokens=2, do_sample=False)
        assert c.stats.method == name
    assert get_method("windowkv:omega=8").omega == 8  # the case that crashed with a TypeError
    assert get_method("windowkv:omega=none").omega is None  # back to the paper's value for the mode


@pytest.mark.parametrize(
    "spec,message",
    [
        ("dynamickv:r_max=nan", "finite"),
        ("pyramidkv:beta=inf", "finite"),
        ("windowkv:lam=-inf", "finite"),
        ("windowkv:omega=8.5", "not an integer or none"),
        ("windowkv:omega=0", "must be > 0"),
        ("windowkv:window=8", "not used by windowkv"),
        ("streamingllm:window=8", "not used by streamingllm"),
        ("fullkv:window=8", "not used by fullkv"),
        ("snapkv:pooling=median", "'avg' or 'max' or 'forward' or 'decay' or 'none'"),
        ("snapkv:kernel=true", "not an integer"),
    ],
)
def test_bad_spec_values(spec, message):
    with pytest.raises(BudgetError, match=message):
        get_method(spec)


def test_keyword_parameters_are_checked_like_specs():
    assert get_method("windowkv", omega="8").omega == 8
    for kwargs, message in (
        ({"r_max": float("nan")}, "finite"),
        ({"window": 2.5}, "not an integer"),
        ({"window": True}, "not an integer"),
        ({"pooling": 3}, "'avg' or 'max'"),
    ):
        with pytest.raises(BudgetError, match=message):
            get_method("dynamickv", **kwargs)
    from dynamickv.methods import DynamicKV

    with pytest.raises(BudgetError, match="finite"):  # direct construction too
        DynamicKV(r_max=float("nan"))


def test_one_token_prompt_is_kept_whole_not_refused(model):
    """A prompt no longer than B is kept whole, one token too (it reached the block's own cache)."""
    one = torch.tensor([[42]])
    plain = model.generate(one, max_new_tokens=4, do_sample=False)
    with compress(model, "snapkv", 48):
        assert torch.equal(model.generate(one, max_new_tokens=4, do_sample=False), plain)

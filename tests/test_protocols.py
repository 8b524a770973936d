"""Evaluation protocols: what each compresses, and FullKV under each equals plain greedy generation."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("tokenizers")

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample, question_offset
from dynamickv.eval.prompts import PROTOCOLS, split_prompt
from evalkit import eval_model, eval_tokenizer, run_grid
from tiny import CHAT_TEMPLATE, one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def tok():
    t = eval_tokenizer()
    t.chat_template = CHAT_TEMPLATE.replace("<s>", "w0 ").replace("</s>", " w1")
    return t


@pytest.fixture(scope="module")
def model(tok):
    return eval_model(tok)


def sample(chat: bool) -> Sample:
    context = " ".join(f"w{(7 * i) % 100 + 2}" for i in range(150))
    question = " w110 w111 w112"
    return Sample(
        task="t",
        index=0,
        prompt=context + question,
        answers=["w5"],
        max_new_tokens=6,
        category="qa",
        chat_template=chat,
        meta={"question_offset": len(context)},
    )


def test_question_offset_from_a_template():
    template = "Read this.\n{context}\nWhat are all the {kind} for {query}?"
    prompt = "Read this.\nWhat a text.\nWhat is the number for x?"
    assert question_offset(prompt, template) == prompt.rindex("\nWhat is")
    assert question_offset("no marker", template) is None
    assert question_offset("x", "no context field") is None


def test_split_by_protocol(tok):
    raw_head, raw_tail = split_prompt(sample(True), tok, "raw")
    assert raw_tail.shape[-1] == 0  # everything is compressed
    assert raw_head[0].tolist() == tok(sample(True).prompt).input_ids
    chat_head, chat_tail = split_prompt(sample(True), tok, "chat")
    agn_head, agn_tail = split_prompt(sample(True), tok, "agnostic")
    # the question tokens are compressed under chat, fed after the context under agnostic
    q = tok(" w110 w111 w112", add_special_tokens=False).input_ids
    assert chat_head[0, -3:].tolist() == q and agn_tail[0, :3].tolist() == q
    assert agn_head.shape[-1] == chat_head.shape[-1] - 3
    assert chat_tail[0].tolist() == agn_tail[0, 3:].tolist()  # end of turn + assistant header
    with pytest.raises(InputError, match="unknown protocol"):
        split_prompt(sample(True), tok, "nope")
    s = sample(False)
    s.meta = {}
    with pytest.raises(InputError, match="question_offset"):
        split_prompt(s, tok, "agnostic")


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_fullkv_equals_plain_greedy_generation(protocol, model, tok, tmp_path):
    """Whatever is compressed, FullKV keeps it all: the answer is plain greedy generation's."""
    s = sample(True)
    head, tail = split_prompt(s, tok, protocol)
    ids = torch.cat([head, tail], dim=-1)
    ref = model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
    expected = tok.decode(ref[0, ids.shape[-1] :], skip_special_tokens=True)
    run_grid([s], model, tok, tmp_path / protocol, methods=["snapkv"], budgets=[40], protocol=protocol)
    records = [json.loads(x) for x in (tmp_path / protocol / "predictions.jsonl").read_text().splitlines()]
    full = next(r for r in records if r["method"] == "fullkv")
    assert full["prediction"] == expected
    config = json.loads((tmp_path / protocol / "config.json").read_text())
    assert config["protocol"] == protocol
    assert f"Protocol: {protocol}," in (tmp_path / protocol / "summary.md").read_text()


def test_raw_first_token_comes_from_the_full_prefill(model, tok, tmp_path):
    """Under the papers' protocol the first answer token is the uncompressed prefill's prediction, so
    every method's first token equals FullKV's, however small the budget."""
    s = sample(False)
    s.max_new_tokens = 1
    run_grid(
        [s], model, tok, tmp_path, methods=["snapkv:window=4", "streamingllm"], budgets=[12], protocol="raw"
    )
    preds = {
        json.loads(x)["method"]: json.loads(x)["prediction"] for x in open(tmp_path / "predictions.jsonl")
    }
    assert len(set(preds.values())) == 1 and preds["fullkv"]

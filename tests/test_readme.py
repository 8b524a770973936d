"""The README's Python quick-start runs as written and finds its needle (issue 13), and the links
between the README and the docs lead somewhere."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_first_python_example_runs_as_written():
    code = python_blocks()[0]
    assert 'load_model("smollm2-135m")' in code  # the block defines its model: nothing undefined
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert "7421956" in printed.splitlines()[0]
    expected = re.search(r"prints \(CPU.*?\n\n```\n(.*?)```", README.read_text(), flags=re.S)
    assert expected is not None
    assert expected.group(1).splitlines()[0].strip() == printed.splitlines()[0].strip()


def test_recommended_method_is_the_one_the_readme_and_cli_use():
    from typer.main import get_command

    from dynamickv.cli import app
    from dynamickv.methods import RECOMMENDED, describe_methods

    assert [m["name"] for m in describe_methods() if m["recommended"]] == [RECOMMENDED]
    assert f'compress(model, "{RECOMMENDED}"' in python_blocks()[0]
    cmd = get_command(app)
    generate = {p.name: p.default for p in cmd.commands["generate"].params}
    assert generate["method"] == RECOMMENDED
    demo = {p.name: p.default for p in cmd.commands["demo"].params}
    assert RECOMMENDED in demo["methods_"].split(",")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


def test_links_between_the_docs_point_at_files_and_headings_that_exist():
    """The README and ``docs/*.md`` link to each other, to results and to headings (the evaluation
    notebook's index); a renamed heading or a moved file must not leave a dead link."""
    root = README.parent
    pages = [README, *sorted((root / "docs").glob("*.md"))]
    dead = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                dead.append(f"{page.name}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = [ln for ln in linked.read_text().splitlines() if ln.startswith("#")]
                if fragment not in {_anchor(h) for h in headings}:
                    dead.append(f"{page.name}: {target}")
    assert not dead, dead

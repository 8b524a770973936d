"""The README's Python quick-start runs as written and finds its needle (issue 13)."""

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

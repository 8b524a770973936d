"""``benchmarks/grid_plot.py``: one panel per run folder (a folder with only a peer table counts),
titled with what tells two sets of one model apart, wrapped into rows with ``--columns``."""

from __future__ import annotations

import json

from benchscripts import run


def _peer_folder(path, seed: int, snap: float) -> None:
    path.mkdir(parents=True)
    metrics = {
        "model": "smollm2-135m",
        "benchmark": "ruler",
        "lengths": [4096],
        "seed": seed,
        "common_samples": 13,
        "methods": {
            "fullkv": {"source": "dynamickv", "budgets": {"full": {"average": 30.0}}},
            "snapkv-decay": {
                "source": "dynamickv",
                "budgets": {"64": {"average": snap}, "128": {"average": 22.0}},
            },
            "kvpress-snapkv": {
                "source": "kvpress",
                "budgets": {"64": {"average": 1.0}, "128": {"average": 2.0}},
            },
        },
    }
    (path / "peer_metrics.json").write_text(json.dumps(metrics))


def test_three_panels_in_rows_of_two_titled_by_seed(tmp_path):
    for i, seed in enumerate((2002, 7007, 9009)):
        _peer_folder(tmp_path / f"set{i}", seed, 20.0 + i)
    out = tmp_path / "grid.png"
    done = run(
        "grid_plot", *(str(tmp_path / f"set{i}") for i in range(3)), "--columns", "2", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    titles = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert titles == [f"== smollm2-135m, ruler, L 4096, seed {s} (13 samples)" for s in (2002, 7007, 9009)]
    assert "B=64:  22.0" in done.stdout  # the third panel's own row
    from PIL import Image

    width, height = Image.open(out).size
    assert height > width / 2  # two rows of two panels, not one row of three

"""Metrics of an evaluation run cut short, over the samples every configuration answered.

    python benchmarks/complete_samples.py RUN

A sharded ``dynamickv eval`` stopped by a time limit leaves ``predictions.rank*.jsonl`` files in which
some samples have every configuration and the last ones only some. Scoring every prediction would
compare configurations on different samples; this keeps the samples that are complete (every
method at every budget, and FullKV), folds the shard files into ``predictions.jsonl`` with the
harness's own merge (what a resumed run does first; a run resumed once already has both) and writes
the harness's ``metrics.json``/``summary.md``/``summary.csv`` for that subset, plus
``complete_samples.json`` (which samples, per task). The run's
``config.json`` rebuilds the samples (``benchmarks/quality_peer.py`` does the same).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from quality_peer import _samples_of_run

    from dynamickv.eval import runner
    from dynamickv.eval.outdir import merge_shards
    from dynamickv.eval.prompts import sample_uid

    config, _, samples = _samples_of_run(args.run)
    grid = runner.configurations(config["methods"], config["budgets"])
    # what a resumed run does first: fold the shard files into predictions.jsonl, then remove them
    records = merge_shards(args.run, [sample_uid(s) for s in samples], grid)
    have = {runner.record_key(r) for r in records}
    complete = [s for s in samples if all((sample_uid(s), c.method, c.budget_key) in have for c in grid)]
    if not complete:
        raise SystemExit(f"error: no sample of {args.run} has every configuration")
    metrics = runner.finalize(
        args.run, complete, grid, records, runner.get_scorer(config["benchmark"]), config
    )
    info = {
        "complete": len(complete),
        "of": len(samples),
        "per_task": dict(Counter(s.task for s in complete)),
        "uids": [sample_uid(s) for s in complete],
    }
    (args.run / "complete_samples.json").write_text(json.dumps(info, indent=1))
    print(f"{len(complete)} of {len(samples)} samples complete: {info['per_task']}")
    print(json.dumps(metrics["average"], indent=1)[:2000])


if __name__ == "__main__":
    main()

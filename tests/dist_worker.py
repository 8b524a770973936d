"""A ``torchrun`` worker for tests/test_distributed.py: one rank of a sharded evaluation on the CPU.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py OUT [--resume]
        [--kill-rank R --kill-after N]

``--kill-rank R --kill-after N`` makes rank R die (``os._exit``, no clean-up, like a killed process)
when it is about to decode its N+1-th answer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from dynamickv.eval import distributed, runner
from evalkit import eval_model, eval_tokenizer, make_samples, run_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-after", type=int, default=0)
    ap.add_argument("--samples", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shard = distributed.current_shard()
    distributed.init(shard)
    if shard.rank == args.kill_rank:
        real, calls = runner._decode, [0]

        def dying(*a, **k):
            calls[0] += 1
            if calls[0] > args.kill_after:
                os._exit(17)
            return real(*a, **k)

        runner._decode = dying
    tok = eval_tokenizer()
    model = eval_model(tok)
    run_grid(
        make_samples(args.samples),
        model,
        tok,
        args.out,
        windowkv_mode="category",
        resume=args.resume,
        shard=shard,
    )
    distributed.close(shard)


if __name__ == "__main__":
    main()

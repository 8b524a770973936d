"""The ``dynamickv bench`` command: its options and checks. The measurements live in
:mod:`dynamickv.bench`, imported when the command runs, so ``dynamickv --help`` never loads torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .bench_configs import CONFIGS


def register(app) -> None:
    @app.command()
    def bench(
        config: Annotated[str, typer.Option(help=f"model shape: {', '.join(CONFIGS)}")] = "tiny",
        methods: Annotated[str, typer.Option(help="comma-separated; fullkv = plain transformers")] = (
            "fullkv,snapkv,pyramidkv,dynamickv"
        ),
        budget: Annotated[int, typer.Option(help="tokens kept per layer")] = 1024,
        lengths: Annotated[str, typer.Option(help="context lengths")] = "32768,65536,131072",
        device: Annotated[
            str | None,
            typer.Option(
                help="cpu, cuda, cuda:N, or auto: the layers spread over every visible GPU, as eval's "
                "--device auto (--batch runs on its first GPU); default: the first GPU, else the CPU",
                show_default=False,
            ),
        ] = None,
        steps: Annotated[int, typer.Option(help="decode steps timed")] = 64,
        chunk: Annotated[int, typer.Option(help="prefill chunk for MLP/norms")] = 8192,
        graph: Annotated[bool, typer.Option(help="CUDA-graph the static decode step")] = True,
        kvpress_path: Annotated[str, typer.Option(help="PYTHONPATH holding kvpress + its transformers")] = "",
        kvpress_methods: Annotated[str, typer.Option()] = "snapkv,pyramidkv,streamingllm",
        out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench.json"),
        batch: Annotated[int, typer.Option(help="rows decoded together (> 1: the serving benchmark)")] = 1,
        max_batch: Annotated[bool, typer.Option(help="find the largest batch that fits, per method")] = False,
        distinct: Annotated[int, typer.Option(help="distinct prefilled requests copied over the rows")] = 2,
        resume: Annotated[
            bool, typer.Option("--resume", help="continue an interrupted run: the rows --out holds are kept")
        ] = False,
        mode: Annotated[
            str,
            typer.Option(
                help="decode step: auto, plain, functional, fused, compiled; "
                "optionally :sdpa, :matmul, :flex or :splitkv (attention kernel), e.g. compiled:matmul"
            ),
        ] = "auto",
    ) -> None:
        """Benchmark prefill, memory and decode against plain transformers (and kvpress).

        With --batch N (N > 1) or --max-batch: batched decode throughput and time to first token."""
        from .batch_decoder import parse_mode
        from .bench import run_bench
        from .decode_step import check_attention
        from .devices import resolve
        from .errors import InputError
        from .options import check_device, check_kvpress_path, check_output_file, check_positive

        if device is None:  # one GPU: spreading a model that fits one costs decode speed (no CUDA graph)
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        devices = resolve(check_device(device))

        if config not in CONFIGS:
            raise InputError(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        # one line for a bad mode, or a kernel that cannot run on the device, before the model is built
        check_attention(parse_mode(mode)[1], str(devices[0]))
        for value, option in ((steps, "--steps"), (budget, "--budget"), (chunk, "--chunk")):
            check_positive(value, option)
        if batch < 1 or distinct < 1:
            raise InputError("--batch and --distinct must be at least 1")
        if batch > 1 and distinct > batch:  # each row holds one request: the rest would be dropped unsaid
            raise InputError(f"--distinct {distinct} is more than --batch {batch}: give at most {batch}")
        check_output_file(out, "--out")  # before the benchmark runs: its results must have somewhere to go
        from .bench_file import check_unfinished

        check_unfinished(out, resume)
        if kvpress_path and len(devices) > 1:
            raise InputError(
                f"kvpress rows run on one GPU, and --device {device} spreads the layers over {len(devices)}: "
                "pass --device cuda"
            )
        if kvpress_path and (batch > 1 or max_batch):
            raise InputError(
                "kvpress rows are batch 1 (its pipeline compresses one context per call): "
                "drop --kvpress-path, or --batch/--max-batch"
            )
        if kvpress_path:
            check_kvpress_path(kvpress_path)
        try:
            length_list = [int(x) for x in lengths.split(",")]
        except ValueError:
            raise InputError(f"--lengths must be comma-separated integers, got {lengths!r}") from None
        if any(n < 1 for n in length_list):
            raise InputError(f"--lengths must be positive, got {lengths!r}")
        method_list = [m.strip() for m in methods.split(",") if m.strip()]
        if not method_list:
            raise InputError("--methods is empty")
        from .methods import get_method

        for m in method_list:
            get_method(m).validate(budget, num_layers=10**6)  # a bad name or budget fails before the build
        if batch > 1 or max_batch:
            from .bench_batch import serving_bench

            serving_bench(
                config,
                method_list,
                budget,
                length_list,
                str(devices[0]),  # one GPU: the batched decoder's rows live on one device
                None if max_batch else batch,
                steps,
                distinct,
                mode,
                out,
                resume,
            )
            return
        run_bench(
            config,
            method_list,
            budget,
            length_list,
            device,
            steps,
            chunk,
            graph,
            kvpress_path or None,
            [m for m in kvpress_methods.split(",") if m],
            out,
            mode,
            resume,
        )

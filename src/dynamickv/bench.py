"""``dynamickv bench``: prefill time, peak memory, cache bytes and decode latency per method.

Speed and memory do not depend on weight values, so models are randomly initialised from real
configurations. Per method and context length it measures, in one process:

* prefill seconds (compression included) and, separately, the scoring/selection seconds;
* peak memory above the weights during prefill and during decoding (CUDA allocator peaks);
* compressed cache bytes;
* decode milliseconds per token (median over steps after warm-up, synchronised timers), for the
  eager ``transformers`` loop and for dynamickv's static CUDA-graph decoder;
* the decode floor ``(weight bytes + cache bytes) / copy bandwidth`` measured on the same device,
  and each decode time as a multiple of it.

With ``device="auto"`` and several GPUs the model's layers are spread over all of them
(:func:`spread`): memory is then summed over the GPUs, every GPU is synchronised around a timer, and
the static decoder runs without a CUDA graph (a graph cannot span GPUs). An out-of-memory error is
recorded with the phase it struck in (``oom_in``), not raised.

``fullkv`` here is plain ``transformers`` (no dynamickv code in the loop): the peer to beat.
NVIDIA kvpress runs in its own process (``benchmarks/kvpress_peer.py``, its own transformers).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import bench_file
from .bench_configs import CONFIGS  # re-exported: benchmarks/ import it from here
from .devices import allocated, peak_gib, placement, release, resolve, sync
from .errors import DynamicKVError, InputError


def build_model(name: str, device: str | list[torch.device], dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised model of a real configuration, directly on ``device``; a list of
    several devices spreads its layers over them (:func:`spread`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    devices = [device] if isinstance(device, str | torch.device) else device
    if len(devices) > 1:
        return spread(AutoModelForCausalLM, config, devices, dtype)
    with torch.device(devices[0]):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def spread(model_cls: Any, config: Any, devices: list[torch.device], dtype: torch.dtype) -> torch.nn.Module:
    """``model_cls.from_config(config)`` with random weights, its layers spread over ``devices``
    (:func:`~dynamickv.devices.placement`; embeddings on the first device, final norm and head on
    the last), built without ever holding the whole model on one device.

    The model is built on the ``meta`` device, each part is allocated on its own device and
    initialised there by the model's own ``_init_weights`` (which also rebuilds the rotary
    embedding's frequencies), and ``accelerate``'s hooks move activations between devices."""
    try:
        from accelerate import dispatch_model
    except ImportError:
        raise DynamicKVError("layers spread over GPUs need accelerate: pip install accelerate") from None
    with torch.device("meta"):
        model = model_cls.from_config(config, dtype=dtype)
    body = model.model
    devices = devices[: len(body.layers)]  # no more devices than layers
    first, last = str(devices[0]), str(devices[-1])
    head = first if model.config.tie_word_embeddings else last  # a tied head shares the embedding
    device_map = {
        f"model.{name}": first for name, _ in body.named_children() if name not in ("layers", "norm")
    }
    for i, d in enumerate(placement(len(body.layers), len(devices))):
        device_map[f"model.layers.{i}"] = str(devices[d])
    device_map.update({"model.norm": last, "lm_head": head})
    for name, where in device_map.items():
        part = model.get_submodule(name)
        part.to_empty(device=where)
        part.apply(model._init_weights)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return dispatch_model(model.eval(), device_map=device_map, main_device=first)


def copy_bandwidth(device: str | torch.device) -> float | None:
    """Bytes per second of a large device copy, counting bytes read and written; ``None`` off CUDA
    (not measured there, so no decode floor is reported)."""
    if torch.device(device).type != "cuda":
        return None
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync(device)
    seconds = (time.perf_counter() - t0) / 10
    del x, y
    return 2 * (1 << 30) / seconds


from .bench_serving import is_oom, steady_ms  # noqa: E402
from .cache import cache_kwarg, output_cache  # noqa: E402


def _cache_bytes(cache) -> int:
    from .cache import cache_bytes

    return cache_bytes(cache)


@torch.inference_mode()
def measure(
    model,
    method: str,
    budget: int,
    n: int,
    steps: int,
    device: list[torch.device],
    chunk: int,
    graph: bool,
    weights: int,
    eager_steps: int,
    mode: str = "auto",
) -> dict[str, Any]:
    """One configuration; OOM is recorded, not raised. ``mode`` is the static decoder's
    ``mode[:attention]`` (:func:`~dynamickv.batch_decoder.parse_mode`)."""
    from .batch_decoder import parse_mode
    from .compressor import Compressor
    from .fast import StaticDecoder, chunked_prefill

    row: dict[str, Any] = {"method": method, "budget": budget if method != "fullkv" else None, "tokens": n}
    ids = torch.randint(0, model.config.vocab_size, (1, n), device=model.get_input_embeddings().weight.device)
    release(device)
    base = allocated(device)
    phase = "prefill"  # where an OOM struck, recorded beside it
    try:
        sync(device)
        t0 = time.perf_counter()
        if method == "fullkv":
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            stats = None
        else:
            comp = Compressor(model, method, budget, sync_timing=True)
            with comp, chunked_prefill(model, chunk):
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            stats = comp.stats
        sync(device)
        row["prefill_s"] = time.perf_counter() - t0
        row["prefill_peak_gib"] = peak_gib(device, base)
        if stats is not None:
            row["selection_s"] = stats.selection_seconds
            row["kept_mean"] = sum(stats.kept_per_layer) / len(stats.kept_per_layer)
        cache = output_cache(out)
        row["cache_bytes"] = _cache_bytes(cache)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        release(device)
        # eager decode: the ordinary transformers loop
        phase = "eager decode"
        times = []
        tok = first
        ctx = Compressor(model, "fullkv", 1) if method != "fullkv" else None
        if ctx is not None:
            ctx.__enter__()
        try:
            from .cache import fork_cache

            c = fork_cache(cache) if method != "fullkv" else cache
            for _ in range(eager_steps):
                sync(device)
                t0 = time.perf_counter()
                o = model(input_ids=tok, use_cache=True, **{cache_kwarg(model): c})
                tok = o.logits[:, -1:].argmax(-1)
                sync(device)
                times.append(time.perf_counter() - t0)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        row["decode_eager_ms"] = steady_ms(times, warmup=3)
        row["decode_peak_gib"] = peak_gib(device, base)
        del c
        if method != "fullkv":
            phase = "static decode"
            release(device)
            times: list[float] = []
            step, attention = parse_mode(mode)
            decoder = StaticDecoder(model, cache, steps + 1, graph=graph, mode=step, attention=attention)
            decoder.generate(first[:, 0], steps + 1, timings=times)
            row["decode_static_mode"] = decoder.decoder.label
            del decoder
            row["decode_static_ms"] = steady_ms(times, warmup=3)
            row["decode_static_peak_gib"] = peak_gib(device, base)
        del cache
    except (torch.OutOfMemoryError, RuntimeError) as e:
        # also the driver's own (a stream or a graph that cannot be made: torch.AcceleratorError)
        if not is_oom(e):
            raise
        row.update(oom=True, oom_in=phase)
    release(device)
    row["weights_gib"] = weights / 2**30
    return row


def run_bench(
    config: str,
    methods: list[str],
    budget: int,
    lengths: list[int],
    device: str,
    steps: int = 64,
    chunk: int = 8192,
    graph: bool = True,
    kvpress_path: str | None = None,
    kvpress_methods: list[str] | None = None,
    out: Path | None = None,
    mode: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Measure every method at every length; ``out`` is rewritten after each row (see
    :mod:`dynamickv.bench_file`), and ``resume`` keeps the rows it already holds."""
    devices = resolve(device)  # every device the layers are on: clocks and memory are read on all
    cuda = devices[0].type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(config, devices, dtype)
    devices = sorted({p.device for p in model.parameters()}, key=str)  # those it uses (<= its layers)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(devices[0])
    meta = environment(config, budget, devices[0], None, bw, weights)
    meta.update(
        device_option=device,
        devices=[str(d) for d in devices],
        steps=steps,
        chunk=chunk,
        graph=graph,
        mode=mode,
    )
    rows = bench_file.resumed_rows(out, meta) if resume and out is not None else []
    have = {bench_file.key(r) for r in rows}
    todo = [(n, method) for n in lengths for method in methods if (method, n) not in have]
    # warm-up (kernels, cuBLAS, allocator) so the first measured configuration is not penalised
    for method in dict.fromkeys(["fullkv", *methods]) if todo else ():
        measure(
            model,
            method,
            min(budget, 256),
            min(4096, max(lengths)),
            8,
            devices,
            chunk,
            False,
            weights,
            6,
            mode,
        )
    for n, method in todo:
        row = measure(
            model,
            method,
            budget,
            n,
            steps,
            devices,
            chunk,
            graph and cuda and len(devices) == 1,  # a CUDA graph runs on one device
            weights,
            eager_steps=min(steps, 24),
            mode=mode,
        )
        if "cache_bytes" in row and bw is not None:
            floor = (weights + row["cache_bytes"]) / bw * 1e3
            row["floor_ms"] = floor
            for k in ("decode_eager_ms", "decode_static_ms"):
                if k in row:
                    row[k.replace("_ms", "_x_floor")] = row[k] / floor
        rows.append(row)
        print(json.dumps(row), flush=True)
        bench_file.save(out, meta, rows, complete=False)
    del model
    release(devices)
    proc = None  # the kvpress process, when there is one
    # a peer's row is named kvpress-<press>, with -uniform where its pyramid fell back to one count
    have = {(r["method"].removesuffix("-uniform"), r["tokens"]) for r in rows}
    peer_lengths = [n for n in lengths if any((f"kvpress-{m}", n) not in have for m in kvpress_methods or [])]
    if kvpress_path and peer_lengths:
        peer = Path(__file__).resolve().parents[2] / "benchmarks" / "kvpress_peer.py"
        cmd = [
            sys.executable,
            str(peer),
            "--config",
            json.dumps(CONFIGS[config]),
            "--budget",
            str(budget),
            "--lengths",
            ",".join(map(str, peer_lengths)),
            "--methods",
            ",".join(kvpress_methods or []),
            "--steps",
            str(min(steps, 24)),
        ]
        env = {**__import__("os").environ, "PYTHONPATH": kvpress_path}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = [r for r in rows if not (r["method"].startswith("kvpress-") and r["tokens"] in peer_lengths)]
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                if "cache_bytes" in r and bw is not None:
                    r["floor_ms"] = (weights + r["cache_bytes"]) / bw * 1e3
                    r["decode_eager_x_floor"] = r["decode_eager_ms"] / r["floor_ms"]
                rows.append(r)
                print(line, flush=True)
    result = {"meta": meta, "rows": rows, "complete": True}
    bench_file.save(out, meta, rows, complete=True)
    print_table(result)
    if (
        proc is not None and proc.returncode
    ):  # our rows are kept; the peer's failure is one line, its log a file
        log = Path(out or "bench.json").with_suffix(".kvpress.log")
        log.write_text(proc.stderr)
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
        raise InputError(f"the kvpress process failed (exit {proc.returncode}): {last.strip()} (log: {log})")
    return result


def environment(
    config: str,
    budget: int,
    device: str | torch.device,
    model=None,
    bandwidth: float | None = None,
    weights: int | None = None,
) -> dict[str, Any]:
    """The run's metadata: date, device, versions, model shape, copy bandwidth, command."""
    if weights is None:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device) if bandwidth is None else bandwidth
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if torch.device(device).type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "config": config,
        "budget": budget,
        "copy_bandwidth_gbs": None if bw is None else bw / 1e9,
        "weights_gib": weights / 2**30,
        "command": " ".join(sys.argv),
    }


def print_table(result: dict[str, Any]) -> None:
    cols = [
        ("method", "method", "{}"),
        ("tokens", "tokens", "{}"),
        ("prefill_s", "prefill s", "{:.2f}"),
        ("selection_s", "select s", "{:.3f}"),
        ("prefill_peak_gib", "+peak GiB", "{:.1f}"),
        ("cache_bytes", "cache MiB", "{:.2f}"),
        ("decode_eager_ms", "eager ms/tok", "{:.1f}"),
        ("decode_static_ms", "static ms/tok", "{:.2f}"),
        ("floor_ms", "floor ms", "{:.2f}"),
        ("decode_static_x_floor", "x floor", "{:.2f}"),
    ]
    print(" | ".join(h for _, h, _ in cols))
    for r in result["rows"]:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            if key == "cache_bytes" and v is not None:
                v = v / 2**20
            cells.append(
                "OOM"
                if r.get("oom") and key not in ("method", "tokens") and v is None
                else ("-" if v is None else fmt.format(v))
            )
        print(" | ".join(cells))

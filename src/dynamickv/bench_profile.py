"""Where a batch-1 decode step's time goes: kernel profile, a GEMV-only roofline, decode variants.

Why: a step at batch 1 should cost about ``(weights + cache) / bandwidth``. Two things keep it
above that: the GEMVs themselves not reaching the copy bandwidth, and the many small non-GEMV
kernels (norms, rotary, cache writes, attention), each with a few microseconds of latency that a
CUDA graph does not remove. :func:`gemv_roofline` times a graph of only the step's GEMVs (the same
weight tensors, one token), so ``step - gemv`` is what the small kernels cost; :func:`profile_step`
counts and times the kernels of an uncaptured step by kind; :func:`decode_variants` runs the same
cache through each decode mode (plain transformers forward, functional, fused GEMVs, compiled) so
one run shows what each change buys, and checks the modes agree on the tokens.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from .bench_serving import GIB, decoder_rate, filled_decoder, release, sync
from .decode_step import layer_weights

_KINDS = (  # attention first: memory-efficient attention's kernels are named fmha_cutlass...
    ("attention", ("attention", "fmha", "flash", "cudnn", "sdpa", "softmax", "splitkv")),
    ("gemm", ("gemm", "gemv", "cutlass", "xmma", "splitk", "sm90_", "sm100_", "cublas", "nvjet")),
    ("norm/rotary/elementwise (fused)", ("triton",)),
    ("copy/index", ("copy", "index", "scatter", "cat", "gather", "fill")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in _KINDS:
        if any(k in low for k in keys):
            return kind
    return "elementwise/reduce"


@torch.inference_mode()
def gemv_roofline(model: torch.nn.Module, repeats: int = 20) -> dict[str, Any]:
    """Time a CUDA graph of just the decode step's GEMVs at batch 1 (fused q/k/v and gate/up, o,
    down, LM head; the model's own weights) and report the bandwidth they reach."""
    device = next(model.parameters()).device
    mats = []
    for w in layer_weights(model):
        mats += [w.qkv, w.o, w.gate_up, w.down]
    mats.append(model.get_output_embeddings().weight)
    xs = [torch.randn(1, m.shape[1], dtype=m.dtype, device=device) for m in mats]

    def body():
        for x, m in zip(xs, mats, strict=True):
            F.linear(x, m)

    run = body
    if device.type == "cuda":
        body()
        sync(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        run = graph.replay
    run()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    sync(device)
    ms = (time.perf_counter() - t0) / repeats * 1e3
    nbytes = sum(m.numel() * m.element_size() for m in mats)
    return {"gemv_ms": ms, "gemv_gib": nbytes / GIB, "gemv_gbs": nbytes / ms / 1e6, "gemv_kernels": len(mats)}


def _kernels(run, steps: int, device: torch.device) -> tuple[list, float]:
    """The GPU kernel events of ``run()`` (``steps`` steps) and its wall seconds per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        run()
        sync(device)
        wall = (time.perf_counter() - t0) / steps
    return [e for e in prof.events() if e.device_type == DeviceType.CUDA], wall


@torch.inference_mode()
def profile_step(model, request: dict[str, Any], mode: str, steps: int = 3) -> dict[str, Any]:
    """Kernels of ``steps`` uncaptured batch-1 steps in ``mode``: count and GPU time per step, by
    kind, and the ten most expensive; then the same steps replayed from a CUDA graph (``graph_*``:
    the kernels the profiler sees inside the replays, if it does, and the wall time per replay).
    Kernel time summed against wall time per step shows what is latency between kernels."""
    device = request["first"].device
    out: dict[str, Any] = {"mode": mode}
    for graph in (False, True) if device.type == "cuda" else (False,):
        decoder = filled_decoder(model, [request], 1, 2 * steps + 4, mode, graph=graph)
        decoder.decode(2)  # warm-up, capture (compiled mode compiles here)
        kernels, wall = _kernels(lambda d=decoder: d.decode(steps), steps, device)
        del decoder
        release(device)
        if graph:
            out["graph_kernels_per_step"] = len(kernels) / steps
            out["graph_kernel_ms_per_step"] = sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps
            out["graph_wall_ms_per_step"] = wall * 1e3
            continue
        kinds: dict[str, dict[str, float]] = {}
        names: dict[str, float] = {}
        for e in kernels:
            us = e.time_range.elapsed_us()
            k = kinds.setdefault(kernel_kind(e.name), {"count": 0, "ms": 0.0})
            k["count"] += 1 / steps
            k["ms"] += us / 1e3 / steps
            names[e.name] = names.get(e.name, 0.0) + us / 1e3 / steps
        top = sorted(names.items(), key=lambda kv: -kv[1])[:10]
        out.update(
            kernels_per_step=len(kernels) / steps,
            kernel_ms_per_step=sum(v["ms"] for v in kinds.values()),
            eager_wall_ms_per_step=wall * 1e3,
            by_kind=kinds,
            top_kernels=[{"name": n[:120], "ms": ms} for n, ms in top],
        )
    return out


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> int:
    """How many leading tokens ``tokens`` shares with ``reference`` (row 0)."""
    a, b = tokens[0], reference[0]
    diff = (a != b).nonzero()
    return int(diff[0, 0]) if diff.numel() else int(a.numel())


@torch.inference_mode()
def forced_logits(model, request: dict[str, Any], mode: str, tokens: torch.Tensor) -> torch.Tensor:
    """Float32 logits ``[steps, vocab]`` of batch-1 steps of ``request`` in ``mode``, fed
    ``tokens`` (1-D, one per step) instead of its own greedy tokens (uncaptured steps; see
    :meth:`BatchDecoder.forced_logits`)."""
    decoder = filled_decoder(model, [request], 1, tokens.numel() + 2, mode, graph=False)
    logits = decoder.forced_logits(tokens.view(-1, 1))[:, 0]
    del decoder
    release(request["first"].device)
    return logits


def forced_agreement(logits: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor) -> dict[str, Any]:
    """How close ``logits`` are to the ``reference`` ones along the same fed ``tokens`` (the
    reference's own greedy choices): the steps whose greedy choice is the fed token (and which ones,
    ``forced_picks``), the mean relative L2 distance of the logits, and the largest margin between
    the reference's two best logits at a step where the choice differs (0 if none): a small one
    means the steps it misses are near-ties."""
    picks = logits.argmax(-1).cpu() == tokens.cpu()
    err = (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
    top2 = reference.topk(2, dim=-1).values.cpu()
    margins = (top2[:, 0] - top2[:, 1])[~picks]
    return {
        "forced_top1": int(picks.sum()),
        "forced_steps": int(picks.numel()),
        "forced_picks": picks.tolist(),
        "forced_err": float(err.mean()),
        "forced_miss_margin_max": float(margins.max()) if margins.numel() else 0.0,
    }


def decode_variants(
    model,
    request: dict[str, Any],
    modes: list[str],
    steps: int,
    floor_ms: float | None = None,
    keep_tokens: bool = False,
) -> list[dict[str, Any]]:
    """Batch-1 decode of one request in each mode (CUDA graph where available): ``steps`` steps run
    back to back after capture and timed together (no host synchronisation between steps).

    A mode that fails records its error and the others go on. ``tokens_agree`` counts the leading
    tokens equal to the first mode's (compiled kernels need not be bit-exact); ``keep_tokens`` keeps
    each mode's tokens in its row."""
    rows, reference = [], None
    for mode in modes:
        try:
            row = decoder_rate(model, [request], 1, steps, mode=mode)
        except Exception as e:  # recorded, the run goes on
            rows.append({"mode": mode, "error": f"{type(e).__name__}: {e}"[:500]})
            release(request["first"].device)
            continue
        tokens = row.pop("tokens")
        if reference is None:
            reference = tokens
        row["tokens_agree"] = agreement(tokens, reference)
        if keep_tokens:
            row["tokens"] = tokens
        row["tokens_compared"] = int(reference.shape[1])
        if floor_ms:
            row["floor_ms"] = floor_ms
            row["x_floor"] = row["decode_ms"] / floor_ms
        rows.append(row)
    return rows

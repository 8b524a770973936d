"""Split-KV decode attention in Triton: one query token per row against the decoder's slot buffers.

Why a kernel of our own: at batch 1 the decode step is latency-bound, and the attention of the
other kernels costs several launches per layer (``matmul``: a GEMM for the scores, a softmax, a GEMM
for the values and a sum) or one block per (row, KV head) walking ~1k slots (``sdpa``'s masked
kernel). Here the slots of each (row, KV head) are cut into chunks, one program per chunk (enough
programs to fill the GPU), and a second small kernel merges the chunks' partial softmaxes
(flash-decoding). Two launches per layer.

Precision, and why it matters: the scores are bf16 x bf16 tensor-core dots accumulated in
float32 (each product is exact in float32, so the scores are those of every fused attention), and
the softmax weights stay float32 when they weight the values, where flash kernels round them to
bf16: each weight is split into a bf16 high part and the bf16 rounding of its remainder (16
significant bits together), two tensor-core dots with the values. float32 inputs use float32 dots
throughout. ``benchmarks/decode_agreement.py`` checks the result against a float32 decode of the
same cache on a real model.

Layout: the query heads of one KV head are ``g`` rows of one tile (padded to 16 for ``tl.dot``),
so K and V are read once per KV head, never repeated per query head. The mask is the decoder's
additive ``[b, kv_heads, slots]`` slot mask (0 or a large negative number).

Runs where Triton runs: CUDA, or the CPU under ``TRITON_INTERPRET=1`` (the tests).

Measured (one H200, Llama-3.1-8B shape, batch 1, 128k tokens at B = 1024, docs/benchmarks.md,
2026-11-29): 4.93 ms per token compiled (1.28x the bandwidth floor), against 5.06 ms with
``matmul`` and 5.52 ms with ``sdpa``; its two launches take 0.36 ms of the step. A first version
with float32 ``tl.dot`` (CUDA cores) spent 3.3 ms per step in the partial kernel.
"""

from __future__ import annotations

import os

import torch

from .errors import InputError

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

#: Slots per tile of a program's loop, and the fewest programs worth launching per layer.
BLOCK_SLOTS = 64
TARGET_PROGRAMS = 256


def available(device: torch.device) -> bool:
    """Whether the kernel can run on ``device`` (Triton installed; CUDA, or the interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def check(device: torch.device) -> None:
    """A one-line :class:`InputError` when the kernel cannot run on ``device``."""
    if not available(device):
        why = "Triton is not installed" if triton is None else f"it needs a CUDA device, not {device.type}"
        raise InputError(f"decode attention 'splitkv' cannot run here: {why}; use sdpa or matmul")


if triton is not None:

    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` accumulated in float32: float32 dots for float32 inputs; tensor cores for
        bf16/fp16 ones, or, under the CPU interpreter (whose half-precision dots are wrong), the
        same products in float32 (a bf16 x bf16 product is exact in float32)."""
        if IEEE:
            return tl.dot(a, b, input_precision="ieee")
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _splitkv_partial_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, max_ptr, sum_ptr,
        scale, slots, chunk, group, D,
        G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
        IEEE: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """One (row x KV head, chunk): partial softmax-weighted values of its slots.

        bf16/fp16 inputs: tensor-core dots with float32 accumulation (each product exact), the
        float32 weights split into a bf16 high and a bf16 low part for the values. float32 inputs
        (``IEEE``): float32 dots throughout."""
        bh = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, G_PAD)
        dims = tl.arange(0, D_PAD)
        real = dims < D
        q_at = q_ptr + bh * group * D + rows[:, None] * D + dims[None, :]
        q = tl.load(q_at, mask=(rows[:, None] < group) & real[None, :], other=0.0)
        m_i = tl.full([G_PAD], -1.0e30, tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], tl.float32)
        start = split * chunk
        end = tl.minimum(start + chunk, slots)
        for lo in range(start, end, BLOCK):
            offs = lo + tl.arange(0, BLOCK)
            inside = offs < end
            kv_off = bh * slots * D + offs[:, None] * D + dims[None, :]
            k = tl.load(k_ptr + kv_off, mask=inside[:, None] & real[None, :], other=0.0)
            s = _dot(q, tl.trans(k), IEEE, UPCAST)
            bias = tl.load(mask_ptr + bh * slots + offs, mask=inside, other=float("-inf")).to(tl.float32)
            s = s * scale + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            v = tl.load(v_ptr + kv_off, mask=inside[:, None] & real[None, :], other=0.0)
            if IEEE:
                pv = _dot(p, v, IEEE, UPCAST)
            else:
                p_hi = p.to(v.dtype)
                p_lo = (p - p_hi.to(tl.float32)).to(v.dtype)
                pv = _dot(p_hi, v, IEEE, UPCAST) + _dot(p_lo, v, IEEE, UPCAST)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        part = bh * SPLITS + split
        tl.store(out_ptr + (part * G_PAD + rows[:, None]) * D_PAD + dims[None, :], acc)
        tl.store(max_ptr + part * G_PAD + rows, m_i)
        tl.store(sum_ptr + part * G_PAD + rows, l_i)

    @triton.jit
    def _splitkv_merge_kernel(
        part_ptr, max_ptr, sum_ptr, out_ptr, group, D,
        G_PAD: tl.constexpr, D_PAD: tl.constexpr, SPLITS: tl.constexpr, S_PAD: tl.constexpr,
    ):  # fmt: skip
        """One row x KV head: the chunks' partial results rescaled to one softmax."""
        bh = tl.program_id(0)
        rows = tl.arange(0, G_PAD)
        dims = tl.arange(0, D_PAD)
        splits = tl.arange(0, S_PAD)
        real = splits < SPLITS
        stat = (bh * SPLITS + splits[:, None]) * G_PAD + rows[None, :]  # [S_PAD, G_PAD]
        m = tl.load(max_ptr + stat, mask=real[:, None], other=-1.0e30)
        l_part = tl.load(sum_ptr + stat, mask=real[:, None], other=0.0)
        m_all = tl.max(m, 0)
        w = tl.exp(m - m_all[None, :])  # [S_PAD, G_PAD]
        total = tl.sum(l_part * w, 0)
        acc = tl.zeros([G_PAD, D_PAD], tl.float32)
        for i in range(SPLITS):
            wi = tl.exp(tl.load(max_ptr + (bh * SPLITS + i) * G_PAD + rows) - m_all)
            part = tl.load(part_ptr + ((bh * SPLITS + i) * G_PAD + rows[:, None]) * D_PAD + dims[None, :])
            acc += part * wi[:, None]
        out = acc / total[:, None]
        out_at = out_ptr + bh * group * D + rows[:, None] * D + dims[None, :]
        tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < group) & (dims[None, :] < D))


def _splits(programs: int, slots: int) -> tuple[int, int]:
    """``(splits, chunk)``: chunks of whole tiles, about :data:`TARGET_PROGRAMS` programs in all."""
    tiles = triton.cdiv(slots, BLOCK_SLOTS)
    splits = max(1, min(tiles, triton.cdiv(TARGET_PROGRAMS, programs)))
    chunk = triton.cdiv(tiles, splits) * BLOCK_SLOTS
    return triton.cdiv(slots, chunk), chunk


def splitkv_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """:func:`~dynamickv.decode_step.grouped_attention` as a split-KV Triton kernel (same arguments:
    ``query`` ``[b, heads, 1, d]``, ``keys``/``values`` ``[b, kv_heads, slots, d]``, ``mask``
    ``[b, kv_heads, 1, slots]`` additive). Returns ``[b, heads, 1, d]`` in the query's dtype."""
    b, heads, _, d = query.shape
    kv_heads, slots = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    g_pad = max(16, triton.next_power_of_2(group))
    d_pad = max(16, triton.next_power_of_2(d))
    splits, chunk = _splits(b * kv_heads, slots)
    q = query.reshape(b * kv_heads, group, d).contiguous()
    k, v = keys.contiguous(), values.contiguous()
    bias = mask.reshape(b * kv_heads, slots).contiguous()
    parts = torch.empty(b * kv_heads, splits, g_pad, d_pad, device=q.device, dtype=torch.float32)
    maxes = torch.empty(b * kv_heads, splits, g_pad, device=q.device, dtype=torch.float32)
    sums = torch.empty_like(maxes)
    _splitkv_partial_kernel[(b * kv_heads, splits)](
        q, k, v, bias, parts, maxes, sums, scaling, slots, chunk, group, d,
        G_PAD=g_pad, D_PAD=d_pad, BLOCK=BLOCK_SLOTS, SPLITS=splits,
        IEEE=query.dtype == torch.float32, UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
    )  # fmt: skip
    out = torch.empty(b * kv_heads, group, d, device=q.device, dtype=query.dtype)
    _splitkv_merge_kernel[(b * kv_heads,)](
        parts, maxes, sums, out, group, d,
        G_PAD=g_pad, D_PAD=d_pad, SPLITS=splits, S_PAD=max(2, triton.next_power_of_2(splits)),
    )  # fmt: skip
    return out.reshape(b, heads, 1, d)


if triton is not None:

    @torch.library.custom_op("dynamickv::splitkv_attention", mutates_args=())
    def splitkv_op(
        query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """:func:`splitkv_attention` as one opaque operator, so that ``torch.compile`` keeps the two
        launches as they are (and CUDA graphs capture them) instead of tracing into Triton."""
        return splitkv_attention(query, keys, values, mask, scaling)

    @splitkv_op.register_fake
    def _(query, keys, values, mask, scaling):
        return torch.empty_like(query)

"""A functional decode step with fused projections, for the static decoders (optionally compiled).

Why: one decode step of a ``transformers`` Llama-family model launches ~45 small kernels per layer
(RMSNorm alone is six, rotary about ten, three separate q/k/v GEMVs, two MLP input GEMVs). A CUDA
graph removes the launch overhead but not each kernel's own latency, so at batch 1 those kernels,
not the weight bytes, set the step time. This module computes the same step from the model's own
weights with

* one GEMV for q, k and v and one for the MLP's gate and up projections (:func:`fuse_projections`
  re-homes those weights into one buffer per layer; the modules' parameters become views of it,
  so the model is unchanged and no memory is added);
* attention on the KV heads directly (queries grouped per KV head, no ``repeat_kv`` copy), against
  the decoder's preallocated buffers with an additive per-(row, KV head) slot mask. Three kernels
  compute it (:data:`ATTENTIONS`): ``sdpa`` (PyTorch's fused attention; with a mask on CUDA that is
  the memory-efficient kernel, one block per (row, KV head), which at one query token and ~1k slots
  is latency-bound), ``matmul`` (two batched GEMVs, float32 scores, and a softmax that
  ``torch.compile`` fuses with the mask), ``flex`` (FlexAttention's compiled decode kernel) and
  ``splitkv`` (our Triton split-KV kernel: tensor-core dots, float32 scores and weights, two
  launches per layer; CUDA only; the fastest on the H200, see :mod:`dynamickv.splitkv`);
* optionally ``torch.compile`` of the per-layer function (as gpt-fast does), which fuses the norms,
  rotary and residual adds; layers share one compiled graph (one recompile when layers differ in
  size, after which the slot dimension is dynamic), and each step keeps its own graphs
  (:func:`compiled_layer_step`).

The arithmetic follows the ``transformers`` modules op for op (same RMSNorm, the family's own
``apply_rotary_pos_emb``), so greedy tokens equal the plain path's; the tests check that on CPU.
Supported: the families whose decoder layers are pre-norm RMSNorm + attention + gated MLP (Llama,
Mistral, Qwen2, Qwen3 with its q/k norms, Phi-3 with its already fused weights).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError, UnsupportedModelError

FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
#: How the decode step computes attention (see the module docstring).
ATTENTIONS = ("sdpa", "matmul", "flex", "splitkv")
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
}


@dataclass(frozen=True)
class StepSpec:
    """What every layer of one model shares (constants of the compiled graph)."""

    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    act: str
    scaling: float
    rope: Callable
    qk_norm_eps: float | None = None
    attention: str = "sdpa"


@dataclass
class LayerWeights:
    """One decoder layer's tensors, fused where the model allows (views of its parameters)."""

    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    ln2: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``transformers``' RMSNorm, op for op (float32 statistics, weight applied in the input dtype)."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * x.to(dtype)


def grouped_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """One query token per row against per-KV-head buffers, without repeating K/V per query head.

    ``query`` ``[b, heads, 1, d]``; ``keys``/``values`` ``[b, kv_heads, slots, d]``; ``mask``
    ``[b, kv_heads, 1, slots]`` additive (0 or the dtype's minimum). Query heads ``j * g .. j * g + g - 1``
    share KV head ``j`` (``repeat_kv``'s order), so they become ``g`` queries of that head.
    Returns ``[b, heads, 1, d]``.
    """
    b, heads, _, d = query.shape
    kv_heads = keys.shape[1]
    grouped = query.reshape(b, kv_heads, heads // kv_heads, d)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, 1, d)


def matmul_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """:func:`grouped_attention` as two batched matmuls and a float32 softmax (same arguments).

    Why: compiled, this is two small GEMMs and one fused scale+mask+softmax kernel, which at one
    query token beats SDPA's masked kernel (one block per (row, KV head) walking every slot). The
    scores stay in float32, as inside SDPA's kernels (on CUDA a bf16 GEMM with a float32 output):
    rounded to bf16 they part from a float32 decode more often than the plain path does
    (``benchmarks/decode_agreement.py``); so do the probabilities (:func:`_weighted_values`)."""
    b, heads, _, d = query.shape
    kv_heads, slots = keys.shape[1], keys.shape[2]
    grouped = query.reshape(b * kv_heads, heads // kv_heads, d)
    flat_keys = keys.reshape(b * kv_heads, slots, d).transpose(1, 2)
    scores = _bmm_float32(grouped, flat_keys)
    probs = (scores.view(b, kv_heads, -1, slots) * scaling + mask.float()).softmax(-1)
    return _weighted_values(probs, values).reshape(b, heads, 1, d)


#: The sign, exponent and top 7 mantissa bits of a float32: its value truncated to bf16.
_HIGH_16_BITS = -65536  # 0xFFFF0000 as an int32


def _weighted_values(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``probs @ values`` with float32 probabilities, in ``values``' dtype.

    Why not round ``probs`` to bf16 first: that drops their bits below 2^-8 of each weight, and a
    decode doing so parts from a float32 decode more often than the plain path does
    (``benchmarks/decode_agreement.py``). Instead each weight is split into its bf16 truncation and
    the bf16 rounding of the remainder (16 significant bits together), and both go through one GEMM
    as extra query rows, accumulated in float32: the values are read once, as in a bf16 GEMM, so a
    memory-bound decode pays almost nothing for it."""
    b, kv_heads, group, slots = probs.shape
    if values.dtype == torch.float32:
        return torch.matmul(probs, values)
    # the high part by clearing the low 16 bits (a bf16 value, exactly): ``torch.compile`` drops a
    # round trip through bf16 inside a fused kernel, which would leave the remainder at zero
    hi = (probs.view(torch.int32) & _HIGH_16_BITS).view(torch.float32)
    both = torch.cat([hi, probs - hi], dim=2).to(values.dtype).reshape(b * kv_heads, 2 * group, slots)
    flat_values = values.reshape(b * kv_heads, slots, -1)
    out = _bmm_float32(both, flat_values)
    return (out[:, :group] + out[:, group:]).to(values.dtype).view(b, kv_heads, group, -1)


#: ``torch.bmm(..., out_dtype=)`` (bf16 inputs, float32 output; CUDA), in recent PyTorch.
_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")


def _bmm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched) as float32: on CUDA one bf16 GEMM with a float32 output where PyTorch has
    it, else in float32 (a bf16 x bf16 product is exact in float32 either way)."""
    if a.is_cuda and _BMM_OUT_DTYPE:
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


def flex_grouped_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """:func:`grouped_attention` through FlexAttention (same arguments), the mask added as a score
    modification. Compiled on CUDA it runs FlexAttention's split-KV decode kernel; uncompiled it is
    PyTorch's reference implementation (slow, for tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    group = query.shape[1] // keys.shape[1]
    slot_mask = mask[:, :, 0]

    def add_mask(score, b, h, q_idx, kv_idx):
        return score + slot_mask[b, h // group, kv_idx]

    return flex_attention(query, keys, values, score_mod=add_mask, scale=scaling, enable_gqa=True)


def splitkv_grouped_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """:func:`grouped_attention` as a split-KV Triton kernel (:mod:`dynamickv.splitkv`), float32
    inside; CUDA (or Triton's CPU interpreter) only. :func:`step_spec` registers the operator."""
    return torch.ops.dynamickv.splitkv_attention(query, keys, values, mask, scaling)


_ATTENTION_FNS = {
    "sdpa": grouped_attention,
    "matmul": matmul_attention,
    "flex": flex_grouped_attention,
    "splitkv": splitkv_grouped_attention,
}


def write_slot(buffer: torch.Tensor, rows: torch.Tensor, heads: torch.Tensor, slot: torch.Tensor, new):
    """``buffer[r, h, slot[r]] = new[r, h]`` for every row and head (a graph-safe scatter)."""
    buffer.index_put_((rows, heads, slot.view(-1, 1)), new)


def _project(h: torch.Tensor, weight, bias, sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Outputs of a fused projection split by ``sizes``, or of separate ones (``weight`` a tuple)."""
    if isinstance(weight, tuple):
        biases = bias if bias is not None else (None,) * len(weight)
        return tuple(F.linear(h, w, b) for w, b in zip(weight, biases, strict=True))
    return F.linear(h, weight, bias).split(sizes, dim=-1)


def layer_step(
    spec: StepSpec,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    slot: torch.Tensor,
    rows: torch.Tensor,
    heads: torch.Tensor,
    weights: tuple,
) -> torch.Tensor:
    """One decoder layer for one new token per row; writes its K/V at ``slot`` and unmasks it.

    ``x`` ``[b, 1, hidden]``; ``keys``/``values`` ``[b, kv_heads, slots, d]``; ``mask``
    ``[b, kv_heads, slots]`` additive; ``slot`` ``[b]``; ``rows``/``heads`` index helpers
    (``[b, 1]`` and ``[1, kv_heads]`` aranges); ``weights`` a :meth:`LayerWeights.as_tuple`.
    """
    ln1, qkv_w, qkv_b, q_norm, k_norm, o_w, o_b, ln2, gu_w, gu_b, down_w, down_b = weights
    b = x.shape[0]
    d, hq, hkv = spec.head_dim, spec.heads, spec.kv_heads
    h = rms_norm(x, ln1, spec.eps)
    q, k, v = _project(h, qkv_w, qkv_b, (hq * d, hkv * d, hkv * d))
    q, k, v = q.view(b, 1, hq, d), k.view(b, 1, hkv, d), v.view(b, 1, hkv, d)
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, spec.qk_norm_eps), rms_norm(k, k_norm, spec.qk_norm_eps)
    q, k = spec.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    write_slot(keys, rows, heads, slot, k[:, :, 0])
    write_slot(values, rows, heads, slot, v[:, 0])
    write_slot(mask, rows, heads, slot, torch.zeros((), dtype=mask.dtype, device=mask.device))
    attn = _ATTENTION_FNS[spec.attention](q, keys, values, mask.unsqueeze(2), spec.scaling)
    x = x + F.linear(attn.transpose(1, 2).reshape(b, 1, hq * d), o_w, o_b)
    h = rms_norm(x, ln2, spec.eps)
    half = down_w.shape[1]
    gate, up = _project(h, gu_w, gu_b, (half, half))
    return x + F.linear(_ACTIVATIONS[spec.act](gate) * up, down_w, down_b)


def compiled_layer_step(spec: StepSpec) -> Callable[..., torch.Tensor]:
    """:func:`layer_step` for ``spec``, ``torch.compile``-d with graphs of its own.

    Why not ``torch.compile(functools.partial(layer_step, spec))``: Dynamo keeps compiled graphs per
    *code object*, at most ``recompile_limit`` (8) of them, and runs the function uncompiled, with
    one warning, past that. Every compiled partial runs through the same wrapper code, so a process
    that compiles a few steps (attention kernels, models, batch sizes: the decode benchmarks do)
    silently decoded its later ones uncompiled (on the H200, ``compiled:splitkv`` measured 8.6 ms
    per token instead of about 5). Here each step gets a fresh copy of its code object, so its
    graphs (one, then one with a dynamic slot dimension) have their own count; :class:`FusedStep`
    calls it under :func:`_no_silent_fallback`, so going past the limit raises instead.
    """

    def step(*args):
        return layer_step(spec, *args)

    own = types.FunctionType(step.__code__.replace(), step.__globals__, "layer_step", None, step.__closure__)
    return torch.compile(own, fullgraph=True)


def _no_silent_fallback():
    """Past Dynamo's recompile limit, raise rather than run the compiled step uncompiled."""
    return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)


def _fuse(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for ``modules``' outputs in order; see :func:`layer_weights`."""
    weight = _fused_param(modules, "weight")
    if all(m.bias is None for m in modules):
        return weight, None
    if any(m.bias is None for m in modules):
        raise UnsupportedModelError("fused projections need a bias on all or none of q/k/v (gate/up)")
    return weight, _fused_param(modules, "bias")


def _fused_param(modules: list[torch.nn.Linear], name: str) -> torch.Tensor:
    """The modules' ``name`` parameters concatenated on dim 0, the parameters becoming views of it.
    Parameters that already lie back to back (a previous call) are viewed, not copied."""
    params = [getattr(m, name) for m in modules]
    fused = _adjacent(params)
    if fused is None:
        if params[0].is_cuda:
            # Hand the previous group's freed weights back first. Otherwise the caching allocator
            # carves this buffer out of one of them (a freed 470 MB gate weight serving a 160 MB
            # q/k/v buffer) and the rest of that block can never be returned: on the Llama-3.1-70B
            # shape that stranded 5.2 GiB, and one H200 then ran out of memory prefilling 24k tokens.
            torch.cuda.empty_cache()
        # outside inference mode: a parameter's data cannot become an inference tensor
        with torch.inference_mode(False), torch.no_grad():
            fused = torch.cat([p.detach() for p in params])
            start = 0
            for p in params:
                p.data = fused[start : start + p.shape[0]]
                start += p.shape[0]
    return fused


def _adjacent(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """A tensor viewing ``tensors`` concatenated on dim 0 if they already lie back to back."""
    first = tensors[0]
    if not all(t.is_contiguous() for t in tensors):
        return None
    offset = first.storage_offset()
    storage = first.untyped_storage()
    for t in tensors:
        if t.untyped_storage().data_ptr() != storage.data_ptr() or t.storage_offset() != offset:
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    view = torch.empty(0, dtype=first.dtype, device=first.device)
    return view.set_(storage, first.storage_offset(), (rows, *first.shape[1:])).detach()


def check_attention(name: str, device: str | torch.device | None = None) -> str:
    """``name`` if it is one of :data:`ATTENTIONS` (and, given ``device``, can run there), else a
    one-line :class:`InputError`. Only ``splitkv`` depends on the device (Triton, CUDA)."""
    if name not in ATTENTIONS:
        raise InputError(f"unknown decode attention {name!r}; known: {', '.join(ATTENTIONS)}")
    if name == "splitkv" and device is not None:
        from . import splitkv  # imports Triton and registers the operator

        splitkv.check(torch.device(device))
    return name


def step_spec(model: torch.nn.Module, attention: str = "sdpa") -> StepSpec:
    """The constants every layer's step shares; raises for models the functional step does not know."""
    config = model.config.get_text_config()
    if config.model_type not in FUSED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"the fused decode step supports {', '.join(FUSED_MODEL_TYPES)}, not {config.model_type!r}"
        )
    if config.hidden_act not in _ACTIVATIONS:
        raise UnsupportedModelError(f"the fused decode step does not know activation {config.hidden_act!r}")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise UnsupportedModelError("the fused decode step needs the whole model on one device")
    check_attention(attention, devices.pop())
    layer0 = model.model.layers[0]
    attn0 = layer0.self_attn
    return StepSpec(
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=attn0.head_dim,
        eps=layer0.input_layernorm.variance_epsilon,
        act=config.hidden_act,
        scaling=attn0.scaling,
        rope=sys.modules[type(attn0).__module__].apply_rotary_pos_emb,
        qk_norm_eps=attn0.q_norm.variance_epsilon if hasattr(attn0, "q_norm") else None,
        attention=attention,
    )


def layer_weights(model: torch.nn.Module, fuse: bool = True) -> list[LayerWeights]:
    """Each layer's weights for :func:`layer_step`.

    With ``fuse`` (side effect, and why it is safe): q/k/v and gate/up weights move into one buffer
    per layer and the modules' parameters become views of it; values are unchanged and so is the
    model's output, and no memory is added. Without it, ``qkv``/``gate_up`` hold tuples of the
    separate weights (the benchmark variant that isolates what fusing the GEMVs buys).
    """
    out = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if hasattr(attn, "qkv_proj"):  # Phi-3 stores them fused already
            qkv, qkv_b = attn.qkv_proj.weight, attn.qkv_proj.bias
            gu, gu_b = mlp.gate_up_proj.weight, mlp.gate_up_proj.bias
        elif fuse:
            qkv, qkv_b = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gu, gu_b = _fuse([mlp.gate_proj, mlp.up_proj])
        else:
            qkv, qkv_b = _separate([attn.q_proj, attn.k_proj, attn.v_proj])
            gu, gu_b = _separate([mlp.gate_proj, mlp.up_proj])
        out.append(
            LayerWeights(
                ln1=layer.input_layernorm.weight,
                qkv=qkv,
                qkv_bias=qkv_b,
                q_norm=attn.q_norm.weight if hasattr(attn, "q_norm") else None,
                k_norm=attn.k_norm.weight if hasattr(attn, "k_norm") else None,
                o=attn.o_proj.weight,
                o_bias=attn.o_proj.bias,
                ln2=layer.post_attention_layernorm.weight,
                gate_up=gu,
                gate_up_bias=gu_b,
                down=mlp.down_proj.weight,
                down_bias=mlp.down_proj.bias,
            )
        )
    return out


def _separate(modules: list[torch.nn.Linear]) -> tuple[tuple, tuple | None]:
    weights = tuple(m.weight for m in modules)
    biases = tuple(m.bias for m in modules)
    return weights, None if all(b is None for b in biases) else biases


class FusedStep:
    """The whole decode step (embedding, layers, final norm, LM head) as functions of the weights.

    Args:
        model: a supported family's causal LM, on one device.
        compile: ``torch.compile`` the per-layer function (CUDA: Triton kernels; CPU works too).
        fuse: fuse q/k/v and gate/up (see :func:`layer_weights`).
        attention: one of :data:`ATTENTIONS`.
    """

    def __init__(
        self, model: torch.nn.Module, compile: bool = False, fuse: bool = True, attention: str = "sdpa"
    ) -> None:
        self.spec = step_spec(model, attention)
        self.weights = [w.as_tuple() for w in layer_weights(model, fuse)]
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm_w, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        head = model.get_output_embeddings()
        self.head_w, self.head_b = head.weight, head.bias
        fn = functools.partial(layer_step, self.spec)
        self.layer_fn = compiled_layer_step(self.spec) if compile else fn
        self._guard = _no_silent_fallback if compile else contextlib.nullcontext

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, compile: bool = False, fuse: bool = True, attention: str = "sdpa"
    ) -> FusedStep:
        """The model's step for these options, made once: decoders built later reuse it, and with
        it the compiled graphs (a new step object would compile again)."""
        steps = _STEPS.setdefault(model, {})
        key = (compile, fuse, attention)
        if key not in steps:
            steps[key] = cls(model, compile, fuse, attention)
        return steps[key]

    def __call__(self, tokens, positions, buffers, slot, rows, heads) -> torch.Tensor:
        """Logits ``[b, vocab]`` for ``tokens`` ``[b]`` at ``positions`` ``[b]``; ``buffers`` is one
        ``(keys, values, mask)`` per layer."""
        x = self.embed(tokens.view(-1, 1))
        cos, sin = self.rotary(x, positions.view(-1, 1))
        with self._guard():  # once per step, not per layer
            for w, (k, v, m) in zip(self.weights, buffers, strict=True):
                x = self.layer_fn(x, cos, sin, k, v, m, slot, rows, heads, w)
        x = rms_norm(x, self.norm_w, self.norm_eps)
        return F.linear(x[:, -1], self.head_w, self.head_b)


_STEPS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[bool, bool, str], FusedStep]] = (
    weakref.WeakKeyDictionary()
)

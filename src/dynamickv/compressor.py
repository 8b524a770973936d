"""Compress a ``transformers`` model's KV cache at prefill, with no global monkey-patching.

``with Compressor(model, "dynamickv", budget=128): model.generate(...)`` does three local things
for the duration of the block and undoes them on exit:

1. It switches *this model's* attention implementation to ``dynamickv_<impl>`` (registered once
   through ``transformers``' public ``AttentionInterface``), a thin wrapper around the model's own
   ``sdpa``/``eager`` attention. The wrapper sees exactly the queries and keys the layer used
   (after q-norm and rotary embedding, for every family), so scores need no re-computation; and it
   right-aligns the attention mask for layers that hold fewer tokens than the longest.
2. It adds a forward pre-hook on the model that notices a prefill (an empty cache and several input
   tokens), makes sure a cache exists, and starts a compression session for it.
3. After each compressed layer's prefill attention, the method decides what to keep and the layer's
   cache entry is replaced by a :class:`~dynamickv.cache.CompressedLayer` holding only those tokens.
   So at most one layer's full K/V exists at a time beyond what is kept.
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

from .budget import Budget, parse_budget
from .cache import CompressedLayer, _LayerGroup, block_entered, cache_kwarg, mean_kept, padding_tokens
from .errors import InputError, UnsupportedModelError, UsageError
from .key_mask import KEY_MASK_ATTR, with_key_mask
from .methods import RECOMMENDED, SUPPORTED_MODEL_TYPES, Method, PrefillInfo, get_method
from .ragged import RaggedLayer
from .scoring import Observation
from .selection import KeepIndex, Selection
from .sliding import layer_windows, restrict_to_window

SUPPORTED_ATTENTION = ("sdpa", "eager")
_PREFIX = "dynamickv_"
_ACTIVE = "_dynamickv_compressor"  # the model's entered Compressor, in its __dict__
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _register_attention() -> None:
    """Register the wrapper attention names (idempotent; adds names, replaces nothing)."""
    for impl, mask in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        name = _PREFIX + impl
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _attention)
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)


def _attention(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """The wrapper: the model's own attention, plus compression after a prefill."""
    impl = module.config._attn_implementation.removeprefix(_PREFIX)
    if impl == "eager":
        inner = sys.modules[type(module).__module__].eager_attention_forward
    else:
        inner = sdpa_attention_forward
    static = module.__dict__.get("_dynamickv_static")
    if static is not None:  # a static decoder's buffers: it masks each row's unused slots itself
        return static.attention(module, query, key, value, impl, inner, **kwargs)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-1] > key.shape[-2]:
        # A compressed layer shorter than the longest one: its tokens are the *last* mask columns.
        attention_mask = attention_mask[..., -key.shape[-2] :]
    key_mask = getattr(key, KEY_MASK_ATTR, None)
    if key_mask is not None:
        attention_mask = with_key_mask(attention_mask, key_mask, query, key, impl)
    if query.is_cuda and query.shape[-2] != key.shape[-2]:
        # Decoding: every step changes each layer's key length, and with compressed layers of
        # different lengths every layer has its own; the cuDNN SDPA backend builds a new plan for
        # each new shape (measured: ~45 ms of CPU per call on an H100), so leave it out here.
        # (The static decoders keep it: their shapes never change.)
        with sdpa_kernel(_DECODE_BACKENDS):
            out = inner(module, query, key, value, attention_mask, **kwargs)
    else:
        out = inner(module, query, key, value, attention_mask, **kwargs)
    session: _Session | None = module.__dict__.get("_dynamickv_session")
    if session is not None and session.active and query.shape[-2] == key.shape[-2]:
        session.on_layer(
            module.layer_idx, query, key, kwargs.get("scaling", getattr(module, "scaling", None))
        )
    return out


@dataclass
class PrefillStats:
    """What the last compressed prefill did.

    ``kept_per_layer``: tokens kept per compressed layer per KV head (for a batch, the mean over rows,
    rounded); ``layer_budgets``: the method's per-layer budgets (for a padded batch, its longest row's).
    ``kept_per_row_layer``: ``[row][layer]`` tokens per KV head each row kept (each row of a padded
    batch keeps ``min(B, its length)`` as if it were alone); ``kept_tokens_per_layer_head``:
    ``[layer][kv_head]`` tokens each KV head of each compressed layer holds, summed over rows (for one
    prompt: what each head keeps; head-adaptive methods give heads different counts).
    ``padding_tokens``: token slots held beyond what is kept (0: ragged layers are packed);
    ``rectangular_padding_tokens``: the slots a rectangular layout would have padded instead.
    """

    prompt_tokens: int
    budget: int
    kept_per_layer: list[int]
    layer_budgets: list[int]
    compressed_layers: list[int]
    selection_seconds: float
    method: str
    extra: dict[str, Any] = field(default_factory=dict)
    kept_per_row_layer: list[list[int]] = field(default_factory=list)
    kept_tokens_per_layer_head: list[list[int]] = field(default_factory=list)
    padding_tokens: int = 0
    rectangular_padding_tokens: int = 0


class _Session:
    """One prefill being compressed."""

    def __init__(self, owner: Compressor, cache: Cache, info: PrefillInfo) -> None:
        self.owner, self.cache, self.info = owner, cache, info
        self.method = owner.method
        self.layers = owner.layers  # model layer indices that are compressed, in order
        self.ordinal = {layer: i for i, layer in enumerate(self.layers)}
        self.group = _LayerGroup()
        self.active = True
        self.seconds = 0.0
        self.done: set[int] = set()
        self.method.begin(info)

    def on_layer(self, layer_idx: int, query, key, scaling) -> None:
        if layer_idx not in self.ordinal:
            return
        if self.owner.sync_timing and key.is_cuda:  # time only this layer's selection work
            torch.cuda.synchronize(key.device)
        t0 = time.perf_counter()
        obs_q = self.method.observation_queries
        obs = Observation(
            query[..., max(0, query.shape[-2] - obs_q) :, :],
            key,
            scaling,
            self.info.valid,
            self.ordinal[layer_idx],
        )
        with torch.no_grad():
            self.apply(layer_idx, obs)
        if self.owner.sync_timing and key.is_cuda:
            torch.cuda.synchronize(key.device)
        self.seconds += time.perf_counter() - t0

    def apply(self, layer_idx: int, obs: Observation) -> None:
        """Run the method on one layer's observation and apply its keep operations."""
        for j, index in self.method.compress(self.ordinal[layer_idx], obs):
            self._keep(self.layers[j], index)
        self.done.add(layer_idx)

    def _keep(self, layer_idx: int, index: KeepIndex) -> None:
        layer = self.cache.layers[layer_idx]
        if not isinstance(layer, CompressedLayer):
            b, h, n, _ = layer.keys.shape
            pos = torch.arange(n, device=layer.keys.device).expand(b, h, n)
            layer = CompressedLayer(layer.keys, layer.values, pos, n, self.group)
            self.cache.layers[layer_idx] = layer
        if index is None:
            return
        # a selection may come from another layer's device (WindowKV groups, DynamicKV's
        # re-allocation) when consecutive layers live on different devices
        index = index.to(layer.keys.device)
        if isinstance(index, Selection):
            rect = index.rectangular()
            if rect is None and not isinstance(layer, RaggedLayer):
                # counts differ per (row, KV head): store the kept tokens packed, no padding
                self.group.layers.remove(layer)
                self.cache.layers[layer_idx] = RaggedLayer.from_selection(layer, index, self.group)
                return
            index = index if rect is None else rect
        layer.keep(index)

    def finish(self) -> PrefillStats:
        self.active = False
        missing = [i for i in self.layers if i not in self.done]
        if missing:
            raise UnsupportedModelError(
                f"layers {missing[:5]} never reached dynamickv's attention: this model does not use the "
                "transformers AttentionInterface for them"
            )
        window = getattr(self.owner, "sliding_window", None)
        for i in self.layers:
            self.cache.layers[i].sliding_window = window
            if window is not None and getattr(self.owner, "trim_window", True):
                self.cache.layers[i].free_outside_window()  # FullKV keeps all; the layer sees W - 1
        counts = [self.cache.layers[i].kept_counts() for i in self.layers]  # [b, h] each
        per_row = [[mean_kept(c[r]) for c in counts] for r in range(counts[0].shape[0])]
        held, rect = padding_tokens(self.cache)
        stats = PrefillStats(
            prompt_tokens=self.info.n,
            budget=self.info.budget,
            kept_per_layer=[mean_kept(c) for c in counts],
            layer_budgets=self.method.budgets(),
            compressed_layers=list(self.layers),
            selection_seconds=self.seconds,
            method=self.method.name,
            kept_per_row_layer=per_row,
            kept_tokens_per_layer_head=[[int(v) for v in c.sum(dim=0).tolist()] for c in counts],
            padding_tokens=held,
            rectangular_padding_tokens=rect,
        )
        stats.extra.update(self.method.extra_stats())
        return stats


def compressible_layers(model: torch.nn.Module) -> list[int]:
    """Indices of the layers whose cache is compressed: every full-attention layer; sliding-window
    layers next to them (Gemma 3's local layers) already bound their cache and are left alone; when
    every layer slides with one window (Mistral-7B-v0.1, Phi-3-mini), every layer (see
    :mod:`dynamickv.sliding`)."""
    windows = layer_windows(model)
    full = [i for i, w in enumerate(windows) if w is None]
    if full or len(set(windows)) != 1:
        return full
    return list(range(len(windows)))


def compressed_window(model: torch.nn.Module, layers: list[int]) -> int | None:
    """The sliding window of the compressed layers (``None``: they are full-attention layers)."""
    windows = {layer_windows(model)[i] for i in layers}
    return windows.pop() if len(windows) == 1 else None


def check_model(model: torch.nn.Module) -> str:
    """Raise :class:`UnsupportedModelError` for architectures or attention kernels we do not handle."""
    config = model.config.get_text_config()
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    impl = model.config._attn_implementation or "eager"
    impl = impl.removeprefix(_PREFIX)
    if impl not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {impl!r} is not supported; load the model with "
            f"attn_implementation='sdpa' or 'eager'"
        )
    return impl


def valid_mask(attention_mask: torch.Tensor | None, n: int) -> tuple[torch.Tensor | None, int]:
    """``(valid, n_eff)`` from a 2-D attention mask; only left padding is accepted."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None, n
    valid = attention_mask[:, -n:].bool()
    if bool(valid.all()):
        return None, n
    lengths = valid.sum(dim=1)
    # left padding: the real tokens of each row are a suffix
    suffix = torch.arange(n, device=valid.device).view(1, n) >= (n - lengths).view(-1, 1)
    if not torch.equal(suffix, valid):
        raise InputError("only left padding is supported: set tokenizer.padding_side = 'left'")
    if int(lengths.min()) == 0:
        raise InputError("a prompt in the batch is empty (all padding)")
    return valid, int(lengths.min())


class Compressor:
    """Compress the KV cache of ``model`` at every prefill inside the ``with`` block.

    Args:
        model: a ``transformers`` causal LM (Llama, Mistral, Qwen2, Qwen3, Gemma 3, Phi-3 families)
            loaded with ``attn_implementation`` ``"sdpa"`` or ``"eager"``.
        method: a registry name (see :data:`dynamickv.methods.METHODS`) or a :class:`Method`.
        budget: ``B``, tokens kept per layer per KV head on average, window included (an int), or a
            ratio of the prompt (``0.1``, ``"10%"``).
        sync_timing: synchronise CUDA around the selection work so ``stats.selection_seconds`` is
            exact (costs a little time; off by default).
        **params: method parameters (``window=16`` ...).

    After each prefill, :attr:`stats` describes what was kept.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: str | Method = RECOMMENDED,
        budget: Budget | int | float | str = 128,
        *,
        sync_timing: bool = False,
        **params: Any,
    ) -> None:
        self.model = model
        self.impl = check_model(model)
        self.method = get_method(method, **params)
        self.budget = parse_budget(budget)
        self.layers = compressible_layers(model)
        self.model_type = str(getattr(model.config.get_text_config(), "model_type", "") or "")
        if not self.layers:
            raise UnsupportedModelError("the model has no attention layer dynamickv can compress")
        self.sliding_window = compressed_window(model, self.layers)
        #: What the last prefill's methods saw (prompt length, candidates, budget).
        self.info: PrefillInfo | None = None
        #: Free, after prefill, the tokens sliding layers can no longer attend to (off: a recording
        #: for :func:`dynamickv.replay.derive_cache`, which selects from the whole prompt).
        self.trim_window = True
        if self.budget.tokens is not None:
            self.method.validate(self.budget.tokens, len(self.layers))
        self.sync_timing = sync_timing
        self.stats: PrefillStats | None = None
        self._started: weakref.WeakSet = weakref.WeakSet()  # caches that were empty when a forward began here
        self._session: _Session | None = None
        self._handles: list[Any] = []
        self._saved_impl: str | None = None
        self._cache_kw = cache_kwarg(model)
        self._modules = [
            m
            for m in model.modules()
            if hasattr(m, "layer_idx") and hasattr(m, "config") and type(m).__name__.endswith("Attention")
        ]

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> Compressor:
        if self._handles:
            raise UsageError("this Compressor is already active")
        if self.model.__dict__.get(_ACTIVE) is not None:
            raise UsageError(
                "compress blocks cannot be nested on one model: the inner block would wrap the outer "
                "one's attention; leave the first `with compress(...)` block before entering another"
            )
        _register_attention()
        self.model.__dict__[_ACTIVE] = self
        block_entered(+1)
        self._saved_impl = self.model.config._attn_implementation
        self.model.config._attn_implementation = _PREFIX + self.impl
        self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._post_forward, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.model.__dict__.get(_ACTIVE) is self:
            del self.model.__dict__[_ACTIVE]
            block_entered(-1)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._modules:
            m.__dict__.pop("_dynamickv_session", None)
        self._session = None
        if self._saved_impl is not None:
            self.model.config._attn_implementation = self._saved_impl
            self._saved_impl = None

    # -- hooks --------------------------------------------------------------------------------
    def _pre_forward(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = embeds if embeds is not None else input_ids
        if ref is None:
            return None
        n = ref.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if kwargs.get("use_cache") is False:
            raise UsageError(
                "use_cache=False inside compress: the model keeps no KV cache, so there is nothing to "
                "compress; leave use_cache on (the default)"
            )
        if cache is None:
            cache = DynamicCache(config=self.model.config)
            kwargs[self._cache_kw] = cache
        held = cache.get_seq_length()
        if held == 0:
            self._started.add(cache)  # a one-token prompt is kept whole: its next steps are ours
        elif cache not in self._started and self._filled_outside(cache):
            raise UsageError(
                f"the cache passed in already holds {held} tokens that were not compressed (it was filled "
                "outside the compress block), and compress only compresses a prefill into an empty cache; "
                "pass no cache (or an empty one), or fill it inside the block"
            )
        if held != 0 or n <= 1:
            return args, kwargs  # a decoding step or an extension of an already compressed cache
        self._check_cache(cache)
        valid, n_eff = valid_mask(kwargs.get("attention_mask"), n)
        budget = self.budget.tokens_for(n_eff)
        self.method.validate(budget, len(self.layers))
        # a ratio budget is a share of each row's prompt (not of the part a sliding window still sees)
        row_budgets = None
        if valid is not None and self.budget.ratio is not None:
            row_budgets = [self.budget.tokens_for(int(v)) for v in valid.sum(dim=1).tolist()]
        if self.sliding_window is not None:  # select among what the layers can still attend to
            valid, n_eff = restrict_to_window(valid, ref.shape[0], n, n_eff, self.sliding_window, ref.device)
        info = PrefillInfo(
            n=n,
            n_eff=n_eff,
            num_layers=len(self.layers),
            budget=budget,
            valid=valid,
            model_type=self.model_type,
        )
        if info.lengths is not None and self.budget.ratio is not None:  # a ratio is per row
            info.row_budgets = row_budgets or [budget] * len(info.lengths)
        self.info = info
        self._session = _Session(self, cache, info)
        for m in self._modules:
            m.__dict__["_dynamickv_session"] = self._session
        return args, kwargs

    def _filled_outside(self, cache: Cache) -> bool:
        """Whether ``cache``'s compressed layers are all still transformers' own (dynamic, sliding,
        static): then no prefill inside a block made it, and continuing it would compress nothing.
        dynamickv's layers (:class:`CompressedLayer` and the decoders' buffers) are left alone."""
        layers = [cache.layers[i] for i in self.layers if i < len(cache.layers)]
        return bool(layers) and all(type(layer).__module__.startswith("transformers.") for layer in layers)

    def _check_cache(self, cache: Cache) -> None:
        """Refuse caches whose layers cannot drop tokens; give sliding layers about to be compressed a
        plain layer for the prefill (transformers' sliding layer keeps only the last ``W - 1`` tokens,
        while selection indexes the whole prompt)."""
        for i in self.layers:
            if i >= len(cache.layers):
                continue  # a config-less DynamicCache creates its layers on first use
            layer = cache.layers[i]
            if type(layer) is DynamicSlidingWindowLayer and layer.get_seq_length() == 0:
                cache.layers[i] = DynamicLayer()
            elif type(layer) is not DynamicLayer:
                static = "Static" in type(layer).__name__
                raise UsageError(
                    (
                        "a static cache cannot be compressed (StaticCache, cache_implementation='static'): "
                        "its buffers have a fixed length; use the default dynamic cache under compress "
                        "(dynamickv.fast.StaticDecoder decodes a compressed cache from static buffers)"
                    )
                    if static
                    else f"compress needs transformers' dynamic cache, got a {type(layer).__name__} layer"
                )

    def _post_forward(self, module, args, kwargs, output):
        if self._session is not None:
            session, self._session = self._session, None
            for m in self._modules:
                m.__dict__.pop("_dynamickv_session", None)
            self.stats = session.finish()
        return None


def compress(
    model: torch.nn.Module,
    method: str | Method = RECOMMENDED,
    budget: Budget | int | float | str = 128,
    **params: Any,
) -> Compressor:
    """``with compress(model, "dynamickv-auto", 128): model.generate(...)`` — see :class:`Compressor`.

    The default method is :data:`dynamickv.methods.RECOMMENDED`; pass ``"dynamickv"`` for the paper's
    algorithm as its authors released it."""
    return Compressor(model, method, budget, **params)

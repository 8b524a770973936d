"""Batched greedy decoding of many compressed requests from static buffers (continuous batching;
:func:`dynamickv.serving.serve` drives it over a queue of prompts).

Each request is prefilled (and compressed) on its own, at its own length; :class:`BatchDecoder`
then decodes all of them together, one token per row per step, from preallocated per-layer
buffers, so the step is a fixed sequence of kernels that a CUDA graph captures once.

Layout, per layer: ``[rows, kv_heads, slots, head_dim]`` keys and values with
``slots = max_new_tokens + prompt_slots`` (rounded up to 16, the alignment SDPA's kernels want):
generated tokens first (a row's ``t``-th generated token goes to slot ``t`` in every layer, so the
write index is the same for all layers), then the row's kept prompt tokens. Rows keep different
numbers of tokens per layer (DynamicKV re-allocates per request; a cache layer may even keep
different counts per KV head), so an additive mask ``[rows, kv_heads, slots]`` hides each row's
unused slots. Prompts are read only through the cache layers' ``padded_prompt()`` view and its
``valid`` mask, whatever the layer's storage.

Sliding-window layers: every slot of such a layer also records its token's position, and each step
first hides, in the mask itself, the slots its query at position ``p`` can no longer see
(``position <= p - W``, the model's own sliding rule). Prompt tokens, and generated ones when
``max_new_tokens >= W``, leave the window exactly as they would in ``model.generate``, per KV head
for a compressed layer (Mistral-7B-v0.1, Phi-3-mini: heads keep different positions). An uncompressed
sliding layer next to compressed ones (Gemma 3's local layers) holds its last ``W - 1`` prompt tokens.

Per-row state (next token, tokens generated, position, still running) lives on the device and is
updated inside the captured step: a row that reaches EOS or its own ``max_new_tokens`` stops
writing results and the others go on; the host only looks every few steps (:meth:`finished`),
collects finished rows (:meth:`pop`) and lets new requests join free rows (:meth:`add`).
Greedy output per row equals decoding that request alone (``tests/test_serving.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache

from .cache import cache_kwarg
from .decode_step import FusedStep, check_attention
from .devices import on_device, sync
from .errors import InputError, UnsupportedModelError
from .sliding import layer_windows, prompt_views
from .slot_cache import SlotCache, SlotLayer

_ALIGN = 16
#: How a decode step is computed (see :class:`BatchDecoder`).
MODES = ("auto", "plain", "functional", "fused", "compiled")


def parse_mode(spec: str) -> tuple[str, str]:
    """``"compiled:matmul"`` -> ``("compiled", "matmul")``: a decode mode (:data:`MODES`), optionally
    with the functional step's attention kernel after a colon (default ``"sdpa"``); a one-line
    :class:`InputError` for an unknown part."""
    mode, _, attention = spec.partition(":")
    if mode not in MODES:
        raise InputError(f"unknown decode mode {mode!r}; known: {', '.join(MODES)}")
    return mode, check_attention(attention or "sdpa")


#: One side stream per GPU for every decoder's warm-up and capture (see :func:`capture_stream`).
_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream decoders on ``device`` capture their graphs on, made once per GPU.

    Why not a new stream per decoder: cuBLAS keeps a workspace per stream it has run on, and
    PyTorch keeps it for the life of the process. A new stream per decoder therefore held 32 MiB
    more GPU memory after each decoder, for good (measured on an H200: +0.03 GiB per
    ``dynamickv bench`` configuration), which adds up over an evaluation's many decoders."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def _round_up(n: int, m: int = _ALIGN) -> int:
    return -(-n // m) * m


class BatchDecoder:
    """Greedy decoding of up to ``rows`` compressed requests at once, from static buffers.

    Args:
        model: the model the caches were made with (every layer compressed, or the others sliding:
            Gemma 3's local layers; sliding layers, compressed or not, forget what leaves the window).
        rows: concurrent requests (the batch of every step).
        max_new_tokens: tokens a request may generate (its first token, from prefill, included).
        prompt_slots: kept prompt tokens each layer can hold per row (an int for every layer, or a
            list per layer); a request that keeps more grows the buffers (and re-captures).
        eos_token_id: id or ids that end a row (its EOS is part of its output).
        graph: capture the step as a CUDA graph (default: on CUDA with every layer on one device).
        mode: how a step is computed. ``"plain"``: the model's own forward through dynamickv's
            attention wrapper (any supported family; layers may be split over devices).
            ``"fused"``: :mod:`.decode_step`'s functional step with one GEMV for q/k/v and one for
            gate/up; ``"functional"``: the same step with separate GEMVs (to measure what fusing
            buys); ``"compiled"``: ``"fused"`` with the per-layer function ``torch.compile``-d.
            ``"auto"`` (default): ``"fused"`` where the family supports it and the model is on
            one device, else ``"plain"``.
        attention: the functional step's attention kernel, one of
            :data:`~dynamickv.decode_step.ATTENTIONS` (default ``"sdpa"``); ignored by ``"plain"``.
    """

    @staticmethod
    def _layers(model: torch.nn.Module) -> list[tuple[bool, int | None]]:
        """Per layer: whether it is compressed, and its sliding window (``None``: full attention)."""
        from .compressor import compressible_layers

        compressed = set(compressible_layers(model))
        return [(i in compressed, w) for i, w in enumerate(layer_windows(model))]

    @staticmethod
    def uncompressed_windows(model: torch.nn.Module) -> list[int | None]:
        """Per layer, the window of an uncompressed sliding layer (Gemma 3's local layers), ``None``
        for a compressed layer."""
        return [None if compressed else w for compressed, w in BatchDecoder._layers(model)]

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether the static buffers can hold ``model``: every layer is compressed or slides (an
        uncompressed layer without a window would need the whole prompt)."""
        return all(compressed or w is not None for compressed, w in BatchDecoder._layers(model))

    def __init__(
        self,
        model: torch.nn.Module,
        rows: int,
        max_new_tokens: int,
        prompt_slots: int | Sequence[int] = 0,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        graph: bool | None = None,
        mode: str = "auto",
        attention: str = "sdpa",
    ) -> None:
        from .compressor import Compressor

        if rows < 1 or max_new_tokens < 1:
            raise InputError("rows and max_new_tokens must be at least 1")
        if mode not in MODES:
            raise InputError(f"unknown decode mode {mode!r}; known: {', '.join(MODES)}")
        check_attention(attention)
        self.model = model
        config = model.config.get_text_config()
        n_layers = config.num_hidden_layers
        if not self.supports(model):
            raise UnsupportedModelError("the static decoder needs every layer compressed or sliding")
        #: Per layer, its sliding window (``None``: full attention), and whether it stays uncompressed.
        self.windows = layer_windows(model)
        self._prompt_windows = self.uncompressed_windows(model)
        self.uncompressed = [w is not None for w in self._prompt_windows]
        self._compressor = Compressor(model, "fullkv", budget=1)
        modules = sorted(self._compressor._modules, key=lambda m: m.layer_idx)
        self._modules = modules
        self.device = model.get_input_embeddings().weight.device
        self.rows, self.capacity = rows, max_new_tokens
        self.kv_heads, self.head_dim = config.num_key_value_heads, modules[0].head_dim
        self.dtype = next(modules[0].parameters()).dtype
        slots = [prompt_slots] * n_layers if isinstance(prompt_slots, int) else list(prompt_slots)
        if len(slots) != n_layers:
            raise InputError(f"prompt_slots has {len(slots)} entries for {n_layers} layers")
        self.prompt_slots = slots
        self.buffers = [self._alloc(next(m.parameters()).device, s) for m, s in zip(modules, slots)]
        self._layer_devices = {k.device for k, _, _ in self.buffers}
        #: every device a step runs on: a timed step waits for all of them (layers spread over GPUs)
        self._devices = sorted({self.device, *self._layer_devices}, key=str)
        one_cuda = self.device.type == "cuda" and self._layer_devices == {self.device}
        if graph and not one_cuda:
            raise UnsupportedModelError("CUDA graph decoding needs every layer on one CUDA device")
        self.graph_on = one_cuda if graph is None else graph
        #: Per sliding layer, each slot's token position ``[rows, kv_heads, slots]`` (``None`` elsewhere).
        self.slot_positions: list[torch.Tensor | None] = [
            None if w is None else self._alloc_positions(k.device, k.shape[-2])
            for w, (k, _, _) in zip(self.windows, self.buffers, strict=True)
        ]
        self.step_fn: FusedStep | None = None
        if mode == "auto":
            try:
                self.step_fn, mode = FusedStep.for_model(model, attention=attention), "fused"
            except UnsupportedModelError:
                mode = "plain"
        elif mode != "plain":
            self.step_fn = FusedStep.for_model(
                model, compile=mode == "compiled", fuse=mode != "functional", attention=attention
            )
        self.mode = mode
        self.attention = attention if self.step_fn is not None else "sdpa"
        #: ``mode`` as :func:`parse_mode` reads it (``"fused"``, ``"compiled:matmul"``)
        self.label = mode if self.attention == "sdpa" else f"{mode}:{self.attention}"
        self.fused = self.step_fn is not None
        dev = self.device
        self.tok = torch.zeros(rows, dtype=torch.long, device=dev)
        self.gen = torch.zeros(rows, dtype=torch.long, device=dev)
        self.seen = torch.zeros(rows, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)
        self.limit = torch.zeros(rows, dtype=torch.long, device=dev)
        self.active = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.out = torch.zeros(rows, max_new_tokens + 1, dtype=torch.long, device=dev)
        eos = (
            [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
        )
        self.eos = torch.tensor(list(eos) or [-1], dtype=torch.long, device=dev)
        self._index_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.occupied = [False] * rows
        self.seen_max = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._cache = SlotCache([SlotLayer(self, i) for i in range(n_layers)])
        self._cache_kw = cache_kwarg(model)

    # -- buffers --------------------------------------------------------------------------------
    def _alloc(self, device: torch.device, prompt_slots: int):
        total = _round_up(self.capacity + prompt_slots)
        shape = (self.rows, self.kv_heads, total, self.head_dim)
        keys = torch.zeros(shape, dtype=self.dtype, device=device)
        mask = torch.full(shape[:3], torch.finfo(self.dtype).min, dtype=self.dtype, device=device)
        return keys, torch.zeros_like(keys), mask

    def _alloc_positions(self, device: torch.device, slots: int) -> torch.Tensor:
        return torch.zeros(self.rows, self.kv_heads, slots, dtype=torch.long, device=device)

    def _grow(self, layer: int, slots: int) -> None:
        """Room for ``slots`` prompt tokens in ``layer``, keeping every row's contents."""
        old = self.buffers[layer]
        new = self._alloc(old[0].device, slots)
        used = self.capacity + self.prompt_slots[layer]
        for o, n in zip(old, new, strict=True):
            n[:, :, :used] = o[:, :, :used]
        self.buffers[layer] = new
        positions = self.slot_positions[layer]
        if positions is not None:
            grown = self._alloc_positions(positions.device, new[0].shape[-2])
            grown[..., :used] = positions[..., :used]
            self.slot_positions[layer] = grown
        self.prompt_slots[layer] = slots
        self.graph = None

    def buffer_bytes(self) -> int:
        """Bytes of every layer's keys, values and mask."""
        return sum(t.numel() * t.element_size() for b in self.buffers for t in b)

    def slot_indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(slot, rows, heads)`` on ``device``: the write slot per row and the index helpers."""
        if device not in self._index_cache:
            rows = torch.arange(self.rows, device=device).view(-1, 1)
            heads = torch.arange(self.kv_heads, device=device).view(1, -1)
            slot = self.gen if device == self.device else self.gen.to(device)
            self._index_cache[device] = (slot, rows, heads)
        return self._index_cache[device]

    # -- requests -------------------------------------------------------------------------------
    def free_rows(self) -> list[int]:
        return [r for r, busy in enumerate(self.occupied) if not busy]

    @torch.inference_mode()
    def add(
        self,
        cache: Cache,
        first_token: torch.Tensor | int,
        max_new_tokens: int | None = None,
        copies: int = 1,
    ) -> list[int]:
        """Admit the requests of ``cache`` (one per batch row, each repeated ``copies`` times) into
        free rows; returns their rows. ``first_token``: each request's greedy token from prefill.

        The cache must come straight from a compressed prefill (every layer compressed, except the
        sliding layers the decoder was made for)."""
        layers = list(cache.layers)
        prompts = prompt_views(layers, self._prompt_windows)
        compressed = [la for la, u in zip(layers, self.uncompressed) if not u]
        seen = int(compressed[0].seen)
        for la, u, (k, _, _) in zip(layers, self.uncompressed, prompts, strict=True):
            stored = None if u else getattr(la, "keys", None)
            if isinstance(stored, torch.Tensor) and stored.dim() == 4 and stored.shape[-2] > k.shape[-2]:
                raise RuntimeError("the static decoder starts right after prefill")
        n_req = prompts[0][0].shape[0]
        if n_req > 1 and len(compressed) < len(layers):
            raise UnsupportedModelError(
                "with uncompressed sliding layers the static decoder takes one request per cache "
                "(their padding is not recorded)"
            )
        new = self.capacity if max_new_tokens is None else max_new_tokens
        if not 1 <= new <= self.capacity:
            raise InputError(f"max_new_tokens must be between 1 and the decoder's {self.capacity}")
        free = self.free_rows()
        if len(free) < n_req * copies:
            raise InputError(f"{n_req * copies} rows requested, {len(free)} free")
        targets = torch.tensor(free[: n_req * copies], dtype=torch.long)
        for i, (k, _, _) in enumerate(prompts):
            if k.shape[-2] > self.prompt_slots[i]:
                self._grow(i, k.shape[-2])
        for i, (k, v, valid) in enumerate(prompts):
            self._write_prompt(i, targets, k, v, valid, copies)
        first = torch.as_tensor(first_token, device=self.device).view(-1).repeat_interleave(copies)
        if first.numel() != targets.numel():
            raise InputError(f"{first.numel()} first tokens for {targets.numel()} rows")
        for i, positions in enumerate(self.slot_positions):
            if positions is not None:
                self._write_positions(i, layers[i], prompts[i][0].shape[-2], seen, targets, copies)
        t = targets.to(self.device)
        self.tok[t], self.gen[t], self.seen[t], self.pos[t] = first, 0, seen, seen
        self.limit[t] = new - 1
        self.out[t, 0] = first
        self.active[t] = (new > 1) & ~self._is_eos(first)
        for r in targets.tolist():
            self.occupied[r] = True
        self.seen_max = max(self.seen_max, seen)
        return targets.tolist()

    def _write_prompt(self, layer: int, targets: torch.Tensor, keys, values, valid, copies: int) -> None:
        buf_k, buf_v, buf_m = self.buffers[layer]
        device = buf_k.device
        start, width = self.capacity, keys.shape[-2]
        keys, values = keys.to(device, self.dtype), values.to(device, self.dtype)
        mask = torch.zeros(keys.shape[:3], dtype=self.dtype, device=device)
        if valid is not None:  # masked slots must hold finite values (0 * NaN is NaN)
            valid = valid.to(device)
            keys = keys.masked_fill(~valid.unsqueeze(-1), 0)
            values = values.masked_fill(~valid.unsqueeze(-1), 0)
            mask = mask.masked_fill(~valid, torch.finfo(self.dtype).min)
        rows = targets.to(device).view(-1, copies)
        for i in range(keys.shape[0]):
            r = rows[i]
            shape = (copies, *keys.shape[1:])
            buf_m[r] = torch.finfo(self.dtype).min
            buf_k[r, :, start : start + width] = keys[i].expand(shape)
            buf_v[r, :, start : start + width] = values[i].expand(shape)
            buf_m[r, :, start : start + width] = mask[i].expand(shape[:3])

    def _write_positions(self, layer: int, source, held: int, seen: int, targets, copies: int) -> None:
        """A sliding layer's slot positions for the new rows: generated token ``t`` at ``seen + t``,
        then the kept prompt tokens' own positions (per KV head; the last ``held`` before ``seen`` for
        an uncompressed layer)."""
        positions = self.slot_positions[layer]
        device = positions.device
        if self.uncompressed[layer]:
            kept = torch.arange(seen - held, seen, device=device).expand(targets.numel(), self.kv_heads, held)
        else:
            kept = source.positions[:, :, :held].to(device).repeat_interleave(copies, dim=0)
        r = targets.to(device)
        positions[r, :, : self.capacity] = torch.arange(self.capacity, device=device) + seen
        positions[r, :, self.capacity : self.capacity + held] = kept

    def _slide(self) -> None:
        """Hide, in the mask itself, the sliding layers' slots every row's next query can no longer
        see (``position <= p - W``). A slot once out stays out, so the mask can be changed in place,
        inside the captured step, for the plain and the fused steps alike."""
        limits: dict[tuple[torch.device, int], torch.Tensor] = {}  # one per window and device, not per layer
        for (_, _, mask), positions, window in zip(self.buffers, self.slot_positions, self.windows):
            if positions is not None:
                key = (positions.device, window)
                if key not in limits:
                    limits[key] = (self.pos.to(positions.device) - window).view(-1, 1, 1)
                mask.masked_fill_(positions <= limits[key], torch.finfo(mask.dtype).min)

    def _is_eos(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.view(-1, 1) == self.eos).any(-1)

    def finished(self) -> list[int]:
        """Occupied rows that are done (synchronises with the device)."""
        active = self.active.tolist()
        return [r for r, busy in enumerate(self.occupied) if busy and not active[r]]

    def running(self) -> int:
        """Rows still generating (synchronises)."""
        return int(self.active.sum())

    def pop(self, row: int) -> torch.Tensor:
        """The tokens of a finished row (its first token included, EOS included) and free it."""
        if not self.occupied[row] or bool(self.active[row]):
            raise InputError(f"row {row} is not a finished request")
        self.occupied[row] = False
        return self.out[row, : int(self.gen[row]) + 1].to("cpu", copy=True)

    # -- decoding -------------------------------------------------------------------------------
    def _logits(self) -> torch.Tensor:
        self._slide()
        if self.step_fn is not None:
            slot, rows, heads = self.slot_indices(self.device)
            return self.step_fn(self.tok, self.pos, self.buffers, slot, rows, heads)
        out = self.model(
            input_ids=self.tok.view(-1, 1),
            position_ids=self.pos.view(-1, 1),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: self._cache},
        )
        return out.logits[:, -1]

    def _body(self) -> None:
        """One step for every row; all state stays on the device (no host work)."""
        self._advance(self._logits().argmax(-1).to(self.device))

    def _advance(self, nxt: torch.Tensor) -> None:
        """Record ``nxt`` as every row's next token and move the rows on."""
        self.out.scatter_(1, (self.gen + 1).view(-1, 1), nxt.view(-1, 1))
        gen = self.gen + self.active
        done = self.active & (self._is_eos(nxt) | (gen >= self.limit))
        self.gen.copy_(gen)
        self.active.logical_and_(~done)
        self.tok.copy_(nxt)
        torch.add(self.seen, gen, out=self.pos)

    def _copy_slot_index(self) -> None:
        """Uncaptured steps: the slot index of the layers on other devices follows ``gen``."""
        for device, (slot, _, _) in self._index_cache.items():
            if device != self.device:
                slot.copy_(self.gen)

    def _state(self) -> list[torch.Tensor]:
        return [self.tok, self.gen, self.active, self.pos]

    def _capture(self) -> None:
        # warm up on a side stream (allocator, kernels, compilation), restoring the state after
        # each run (the K/V it wrote sit in the slots the real step rewrites), then capture
        saved = [t.clone() for t in self._state()]
        stream = capture_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._body()
                for t, s in zip(self._state(), saved, strict=True):
                    t.copy_(s)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        # the graph's private pool allocates afresh: hand the warm-up's cached blocks back first
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        self.graph = torch.cuda.CUDAGraph()
        # our own stream on this GPU: torch.cuda.graph's default capture stream is made once, on the
        # GPU current at its first use, and a capture on another GPU through it comes out empty
        with torch.cuda.graph(self.graph, stream=stream):
            self._body()

    @contextmanager
    def _plain_attention(self):
        """The model's attention wrapper, pointed at the slot buffers, for the plain path."""
        if self.fused:
            yield
            return
        with self._compressor:
            for m in self._modules:
                m.__dict__["_dynamickv_static"] = self._cache.layers[m.layer_idx]
            try:
                yield
            finally:
                for m in self._modules:
                    m.__dict__.pop("_dynamickv_static", None)

    @torch.inference_mode()
    def decode(self, steps: int, timings: list[float] | None = None) -> None:
        """Run ``steps`` steps (graph replays on CUDA). With ``timings``, each step is synchronised
        and its seconds appended (benchmarks)."""
        # on the decoder's own GPU: a graph captured while another GPU is current is empty, and its
        # replays then decode nothing (the rows never finish)
        with self._plain_attention(), on_device(self.device):
            for _ in range(steps):
                if timings is not None:
                    sync(self._devices)
                    t0 = time.perf_counter()
                if self.graph_on:
                    if self.graph is None:
                        self._capture()
                    self.graph.replay()
                else:
                    self._body()
                    self._copy_slot_index()
                if timings is not None:
                    sync(self._devices)
                    timings.append(time.perf_counter() - t0)

    @torch.inference_mode()
    def forced_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The float32 logits ``[steps, rows, vocab]`` of ``steps`` uncaptured steps in which each
        row is fed ``tokens[i]`` (``[steps, rows]``) instead of its own greedy token.

        Why: two kernels that round differently part ways at a near-tie and then decode different
        texts, so comparing greedy outputs counts chaos as much as precision. Fed the same tokens,
        every step of every mode sees the same history and its logits can be compared directly
        (``benchmarks/decode_agreement.py``)."""
        steps = []
        with self._plain_attention():
            for nxt in tokens.to(self.device):
                steps.append(self._logits().float())
                self._advance(nxt)
                self._copy_slot_index()
        return torch.stack(steps)

    def run(self, sync_every: int = 8) -> None:
        """Decode until no row is running, looking every ``sync_every`` steps."""
        while self.running():
            self.decode(sync_every)

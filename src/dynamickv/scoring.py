"""Observation-window attention: the signal every attention-based method ranks tokens by.

``A = softmax(Q_obs K^T * scaling)`` in float32 for the last ``W`` prompt queries (after rotary
embedding, exactly as the layer computed them) against all prompt keys, causal inside the window,
with padded keys masked out. A token's score is the sum over the method's ``w <= W`` observation
queries; query heads that share a KV head are averaged (GQA-native selection per KV head).

The attention matrix is computed once per layer and cached on the :class:`Observation`, so several
methods (or several windows) reading the same layer share it: the evaluation harness relies on
this to derive every configuration from one prefill.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Pooling = Literal["avg", "max", "forward", "decay", "none"]
POOLINGS = ("avg", "max", "forward", "decay", "none")
#: ``decay`` pooling looks this many half-lives back (beyond it a score is worth under 1/16)
DECAY_HALF_LIVES = 4

NEG_INF = float("-inf")


def pool_scores(
    scores: torch.Tensor, kernel: int, mode: Pooling, quiet: torch.Tensor | None = None
) -> torch.Tensor:
    """1-D pooling along positions (stride 1), as SnapKV-style methods do.

    Pooling spreads a token's importance to its neighbours so that kept tokens come with their
    local context rather than as isolated words. ``avg`` and ``max`` are centred (same padding);
    ``forward`` is a max over the token and the ``kernel - 1`` tokens *before* it, so a high-scoring
    token lends its score to the ``kernel - 1`` tokens that *follow* it. Why: a model copying a span
    from the context (a 7-digit number, one token per digit) attends at each step to the token after
    the one it just copied; the question's attention, which ranks tokens at prefill, falls on the
    span's start, so centred pooling keeps the start and loses the rest.

    ``decay`` is ``forward`` with a fading loan: token ``t`` scores ``max_d s[t - d] * 2**(-d / kernel)``
    over ``d < 4 * kernel``, so ``kernel`` is the loan's half-life. Why: ``forward`` keeps exactly
    ``kernel`` tokens after a peak however long the span the model will copy (a 30-token uuid loses
    its end at k = 12); a fading loan ranks the first tokens after every peak first and extends the
    spans of the strongest peaks as far as the budget allows.

    ``quiet`` (bool, broadcastable to ``scores``) marks tokens that keep their own score but lend
    none to their neighbours. Why: an attention sink scores about 10^5 times the median token, so
    under ``decay`` its loan outranks every real peak for ``4 * kernel`` tokens and a small budget
    is spent on the tokens after the sink (measured: ``docs/evaluation.md``, the decay screen).
    """
    if mode == "none" or kernel <= 1 or scores.shape[-1] == 0:
        return scores
    if quiet is not None:
        pooled = pool_scores(scores.masked_fill(quiet, 0.0), kernel, mode)
        return torch.where(quiet, torch.maximum(pooled, scores), pooled)
    shape = scores.shape
    flat = scores.reshape(-1, 1, shape[-1])
    if mode == "avg":
        out = F.avg_pool1d(flat, kernel_size=kernel, padding=kernel // 2, stride=1)
    elif mode == "max":
        out = F.max_pool1d(flat, kernel_size=kernel, padding=kernel // 2, stride=1)
    elif mode == "forward":
        padded = F.pad(flat, (kernel - 1, 0), value=NEG_INF)
        return F.max_pool1d(padded, kernel_size=kernel, stride=1).reshape(shape)
    elif mode == "decay":
        out = scores.clone()
        for d in range(1, min(DECAY_HALF_LIVES * kernel, shape[-1])):
            lent = scores[..., :-d] * 2.0 ** (-d / kernel)
            out[..., d:] = torch.maximum(out[..., d:], lent)
        return out
    else:  # pragma: no cover - guarded by the dataclass validation
        raise ValueError(f"unknown pooling {mode!r}")
    return out[..., : shape[-1]].reshape(shape)


def first_real(valid: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``[batch]`` long: each row's first real token, i.e. its left padding (0 without padding)."""
    if valid is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return (~valid).sum(dim=1).to(device)


def stable_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` largest entries along the last dim, ties to the lower index.

    ``torch.topk`` breaks ties arbitrarily, and max pooling makes ties common (plateaus), so a
    stable sort keeps selections deterministic across devices and reproducible by a plain reference.
    """
    values, indices = torch.sort(x, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


class Observation:
    """One layer's prefill, as the methods see it.

    Args:
        queries: ``[b, h_q, W, d]`` the last ``W`` prompt queries after rotary embedding (and any
            q-norm), exactly as the attention layer used them.
        keys: ``[b, h_kv, n, d]`` all prompt keys of the layer.
        scaling: the layer's softmax scaling.
        valid: ``[b, n]`` bool, False at padding positions (``None``: no padding).
        layer: ordinal of the layer among the compressed layers.
    """

    def __init__(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        scaling: float,
        valid: torch.Tensor | None,
        layer: int,
    ) -> None:
        self.queries = queries
        self.keys = keys
        self.scaling = float(scaling)
        # with layers split over devices (device_map), the padding mask lives on the first one
        self.valid = valid if valid is None or valid.device == keys.device else valid.to(keys.device)
        self.layer = layer
        self._attn: torch.Tensor | None = None
        self._sums: dict[int, torch.Tensor] = {}
        self._parent: Observation | None = None

    def last(self, queries: int) -> Observation:
        """This observation seen through its last ``queries`` queries only. Attention rows do not
        depend on the other queries, so the view shares (and fills) this one's computed attention."""
        if queries >= self.num_obs:  # prompts shorter than the window have fewer queries
            return self
        view = Observation(
            self.queries[..., self.num_obs - queries :, :], self.keys, self.scaling, self.valid, self.layer
        )
        view._parent = self
        view._sums = self._sums  # window sums only read the last `window` rows: identical
        return view

    @property
    def n(self) -> int:
        return self.keys.shape[-2]

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def num_obs(self) -> int:
        return self.queries.shape[-2]

    def attention(self) -> torch.Tensor:
        """``[b, h_kv, group, W, n]`` float32 attention probabilities of the observation queries."""
        if self._parent is not None:
            return self._parent.attention()[..., self._parent.num_obs - self.num_obs :, :]
        if self._attn is None:
            b, hq, w, d = self.queries.shape
            hkv, n = self.num_kv_heads, self.n
            group = hq // hkv
            q = self.queries.float().reshape(b, hkv, group * w, d)
            logits = torch.matmul(q, self.keys.float().transpose(-1, -2)) * self.scaling
            logits = logits.view(b, hkv, group, w, n)
            # causal inside the window: observation query i sits at position n - w + i
            qpos = torch.arange(n - w, n, device=logits.device).view(w, 1)
            kpos = torch.arange(n, device=logits.device).view(1, n)
            mask = kpos > qpos  # [w, n]
            if self.valid is not None:
                mask = mask.view(1, 1, 1, w, n) | ~self.valid.view(b, 1, 1, 1, n)
            logits = logits.masked_fill(mask, NEG_INF)
            self._attn = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
        return self._attn

    def _window_sum(self, window: int) -> torch.Tensor:
        """``[b, h_kv, n]``: attention summed over the last ``window`` queries, mean over the group."""
        if window not in self._sums:
            if window > self.num_obs:
                raise ValueError(f"window {window} exceeds the {self.num_obs} captured observation queries")
            attn = self.attention()
            self._sums[window] = attn[..., -window:, :].sum(dim=-2).mean(dim=2)
        return self._sums[window]

    def scores(
        self,
        window: int,
        *,
        kernel: int = 1,
        pooling: Pooling = "none",
        per_kv_head: bool = True,
        quiet_sinks: int = 0,
    ) -> torch.Tensor:
        """Scores of the non-window tokens ``j < n - window``.

        Returns ``[b, h_kv, n - window]`` (or ``[b, n - window]`` averaged over all heads when
        ``per_kv_head`` is False); padded positions are ``-inf`` so they can never be selected.
        ``quiet_sinks``: the first that many real tokens of each row lend nothing when pooling
        (``quiet`` in :func:`pool_scores`).
        """
        s = self._window_sum(window)[..., : self.n - window]
        if not per_kv_head:
            s = s.mean(dim=1)
        return self.pooled(s, kernel=kernel, pooling=pooling, quiet_sinks=quiet_sinks)

    def pooled(
        self, s: torch.Tensor, *, kernel: int = 1, pooling: Pooling = "none", quiet_sinks: int = 0
    ) -> torch.Tensor:
        """Per-token scores ``s`` (``[b, h_kv, m]`` or ``[b, m]``, the first ``m`` prompt tokens)
        pooled along positions, with quiet sinks, and ``-inf`` at padding: what every ranking does
        after its own statistic (:meth:`scores`; CAKE's mean + variance)."""
        per_kv_head = s.dim() == 3
        quiet = self.sink_mask(quiet_sinks, s.shape[-1], per_kv_head) if quiet_sinks > 0 else None
        s = pool_scores(s, kernel, pooling, quiet)
        if self.valid is not None:
            v = self.valid[:, : s.shape[-1]]
            v = v.unsqueeze(1) if per_kv_head else v
            s = s.masked_fill(~v, NEG_INF)
        return s

    def sink_mask(self, sinks: int, length: int, per_kv_head: bool) -> torch.Tensor:
        """``[b, (1,) length]`` bool: the first ``sinks`` real tokens of each row (after left padding)."""
        pos = torch.arange(length, device=self.keys.device).view(1, length)
        first = first_real(self.valid, self.batch, self.keys.device).view(-1, 1)
        mask = (pos >= first) & (pos < first + sinks)
        return mask.unsqueeze(1) if per_kv_head else mask

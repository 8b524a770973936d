"""Budgets: one meaning everywhere, plus the integer arithmetic that keeps sums exact.

A budget ``B`` is the number of tokens kept per layer per KV head, averaged over the compressed
layers, *including* the observation window (the papers' "KV cache size"). The same ``B`` therefore
means the same cache memory for every method. A ratio budget (``0.1`` or ``"10%"``) is converted to
``B`` per prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import BudgetError


@dataclass(frozen=True)
class Budget:
    """Either ``tokens`` (``B``, tokens per layer) or ``ratio`` (fraction of the prompt kept)."""

    tokens: int | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.ratio is None):
            raise BudgetError("a budget is either a token count or a ratio, not both or neither")
        if self.tokens is not None and (isinstance(self.tokens, bool) or self.tokens <= 0):
            raise BudgetError(f"budget must be a positive number of tokens, got {self.tokens}")
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0):
            raise BudgetError(f"budget ratio must be in (0, 1], got {self.ratio}")

    def tokens_for(self, prompt_len: int) -> int:
        """``B`` for a prompt of ``prompt_len`` tokens (a ratio never rounds down to zero)."""
        if self.tokens is not None:
            return self.tokens
        return max(1, math.ceil(self.ratio * prompt_len))

    def __str__(self) -> str:
        if self.tokens is not None:
            return str(self.tokens)
        text = f"{self.ratio:g}"
        return text if "." in text or "e" in text else f"{text}.0"  # "1.0", never "1" (one token)


def parse_budget(value: Budget | int | float | str) -> Budget:
    """Parse ``128``, ``"128"``, ``0.1``, ``"0.1"`` or ``"10%"`` into a :class:`Budget`.

    Integers (and integer strings) are token counts; numbers below 1, strings written as decimals
    (``"0.1"``, ``"1.0"``: a ratio of 1 keeps every token) and percentages are ratios.
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise BudgetError(f"cannot parse budget {value!r}")
    if isinstance(value, int):
        return Budget(tokens=value)
    if isinstance(value, float):
        if value.is_integer() and value > 1:  # 1.0 is the ratio that keeps every token, not one token
            return Budget(tokens=int(value))
        return Budget(ratio=value)
    text = str(value).strip()
    if "_" in text:  # float("64_0") is 640: a typo should not become a budget
        raise BudgetError(f"cannot parse budget {value!r}: use a token count (128) or a ratio (0.1 or 10%)")
    try:
        number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise BudgetError(
            f"cannot parse budget {value!r}: use a token count (128) or a ratio (0.1 or 10%)"
        ) from None
    if not math.isfinite(number):
        raise BudgetError(f"budget must be a finite number, got {value!r}")
    if number <= 0:
        raise BudgetError(f"budget must be > 0, got {value!r}")
    if text.endswith("%"):
        return Budget(ratio=number)
    try:
        return Budget(tokens=int(text))
    except ValueError:  # written as a decimal ("0.1", "1.0", "1e-2"): a ratio of the prompt
        if number > 1:
            raise BudgetError(
                f"budget {value!r}: a ratio is at most 1 (1.0 keeps every token); a token count is an "
                f"integer ({int(number)})"
            ) from None
        return Budget(ratio=number)


def largest_remainder(shares: torch.Tensor, total: int) -> torch.Tensor:
    """Round non-negative real ``shares`` to integers that sum to exactly ``total``.

    Floors first, then hands the missing units to the largest fractional parts (ties to the lower
    index, so the result is deterministic). The authors' code dumps the whole remainder on the
    newest layer instead, which biases it.
    """
    shares = shares.double().clamp_min(0)
    if total < 0:
        raise ValueError("total must be >= 0")
    s = shares.sum()
    if s <= 0:
        shares = torch.ones_like(shares)
        s = shares.sum()
    scaled = shares * (total / s)
    floors = scaled.floor().long()
    missing = total - int(floors.sum())
    if missing > 0:
        frac = scaled - floors.double()
        # stable order: larger fraction first, then lower index
        order = sorted(range(len(frac)), key=lambda i: (-float(frac[i]), i))
        for i in order[:missing]:
            floors[i] += 1
    return floors


def capped_allocation(shares: torch.Tensor, total: int, caps: torch.Tensor) -> torch.Tensor:
    """Integers proportional to ``shares`` that sum to ``min(total, caps.sum())``, none above its cap.

    Water-filling: layers whose proportional share exceeds their cap are fixed at the cap and the
    excess goes to the others in proportion to their shares, until nothing overflows; then the
    largest-remainder rule makes the sum exact.
    """
    caps = caps.long()
    total = min(int(total), int(caps.sum()))
    n = shares.numel()
    shares = shares.double().clamp_min(0)
    fixed = torch.zeros(n, dtype=torch.bool)
    alloc = torch.zeros(n, dtype=torch.double)
    remaining = float(total)
    for _ in range(n + 1):
        free = ~fixed
        if not free.any():
            break
        w = shares[free]
        if w.sum() <= 0:
            w = torch.ones_like(w)
        part = w * (remaining / w.sum())
        over = part > caps[free].double()
        if not over.any():
            alloc[free] = part
            break
        idx = free.nonzero().squeeze(1)[over]
        alloc[idx] = caps[idx].double()
        fixed[idx] = True
        remaining = total - float(alloc[fixed].sum())
    # round: capped layers are integral already; round the free ones to the exact remainder
    out = alloc.floor().long()
    free = ~fixed
    if free.any():
        out[free] = largest_remainder(alloc[free], total - int(out[fixed].sum()))
    # rounding can push a free layer one above its cap only if its real share was within 1 of it
    excess = (out - caps).clamp_min(0)
    while excess.sum() > 0:
        out -= excess
        spare = (caps - out).clamp_min(0)
        give = int(excess.sum())
        for i in torch.argsort(-spare.double(), stable=True).tolist():
            if give == 0:
                break
            take = min(give, int(spare[i]))
            out[i] += take
            give -= take
        excess = (out - caps).clamp_min(0)
    return out

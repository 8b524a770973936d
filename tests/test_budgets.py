"""Budgets: parsing, exact integer allocation, DynamicKV's global sum over a parameter grid."""

from __future__ import annotations

import itertools

import pytest
import torch

from dynamickv import BudgetError, parse_budget
from dynamickv.budget import capped_allocation, largest_remainder
from dynamickv.methods import get_method
from test_methods_reference import make_obs, run_method


@pytest.mark.parametrize(
    "text,tokens,ratio",
    [("128", 128, None), (64, 64, None), ("0.1", None, 0.1), ("10%", None, 0.1), (256.0, 256, None)],
)
def test_parse_budget(text, tokens, ratio):
    b = parse_budget(text)
    assert b.tokens == tokens and b.ratio == pytest.approx(ratio) if ratio else b.tokens == tokens


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "", "150%", 1.5, "nan", True, 0, "64_0"])
def test_bad_budgets(bad):
    with pytest.raises(BudgetError):
        parse_budget(bad)


@pytest.mark.parametrize(
    "text,message",
    [("inf", "finite number"), ("1e999", "finite number"), ("128.0", r"a token count is an integer \(128\)")],
)
def test_bad_budget_messages(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(text)


def test_a_decimal_string_is_a_ratio_and_prints_as_one():
    # "1.0" keeps every token; read as a count it would keep one
    for text, ratio in (("1.0", 1.0), ("0.5", 0.5), ("1e-2", 0.01), ("100%", 1.0)):
        b = parse_budget(text)
        assert b.tokens is None and b.ratio == pytest.approx(ratio)
        assert parse_budget(str(b)) == b  # configs and tables store str(budget)
    assert (
        str(parse_budget("1.0")) == "1.0" and parse_budget(1.0).ratio == 1.0 and parse_budget(1).tokens == 1
    )


@pytest.mark.parametrize("name", ["snapkv", "h2o", "snapkv-decay", "dynamickv", "pyramidkv", "cake", "adakv"])
def test_scoring_methods_need_an_observation_window(name):
    # window=0 left nothing to score with: the prompt's end was dropped, or whole layers kept 0 tokens
    with pytest.raises(BudgetError, match="window must be at least 1"):
        get_method(f"{name}:window=0")


def test_ratio_never_zero():
    assert parse_budget("0.001").tokens_for(10) == 1
    assert parse_budget("10%").tokens_for(1000) == 100


def test_largest_remainder_exact():
    out = largest_remainder(torch.tensor([1.0, 1.0, 1.0]), 10)
    assert out.tolist() == [4, 3, 3]
    for seed in range(20):
        shares = torch.rand(7, generator=torch.Generator().manual_seed(seed))
        assert int(largest_remainder(shares, 1000).sum()) == 1000


def test_capped_allocation_respects_caps_and_sum():
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        shares = torch.rand(9, generator=g)
        caps = torch.randint(0, 50, (9,), generator=g)
        total = int(torch.randint(0, 400, (1,), generator=g))
        out = capped_allocation(shares, total, caps)
        assert int(out.sum()) == min(total, int(caps.sum()))
        assert (out <= caps).all() and (out >= 0).all()


GRID = list(
    itertools.product(
        [5, 40, 64, 65, 300],  # n: below w, below B, equal to B, just above B, long
        [9, 16, 64],  # B: just above w=8, small, medium
        [1, 3, 8],  # L
        [1, 2, 4, 5],  # m
        [1.0, 3.0, 10.0],  # r_max
    )
)


@pytest.mark.parametrize("n,B,L,m,r_max", GRID)
def test_dynamickv_global_budget_exact(n, B, L, m, r_max):
    obs = make_obs(n, L, queries=min(8, n), seed=n * 31 + L)
    method = get_method("dynamickv", update_every=m, r_max=r_max, allocation="candidates")
    kept, method = run_method(method, obs, B)
    sizes = [k.shape[-1] for k in kept]
    if n <= B:
        assert sizes == [n] * L  # short prompts are kept whole
        return
    w = 8
    non_window = sum(s - w for s in sizes)
    cap = int(min(r_max * (B - w), n - w))
    assert non_window == min((B - w) * L, cap * L)  # sum is exactly G (unless layers run out)
    assert all(0 <= s - w <= cap for s in sizes)
    assert method.budgets() == sizes


def test_method_specs_name_ablations():
    """``name:param=value;...`` builds the method with those parameters, typed like the defaults."""
    from dynamickv.errors import BudgetError, UnknownMethodError
    from dynamickv.methods import method_spec, parse_method_spec

    name, params = parse_method_spec(" SnapKV:window=8; pooling=avg ")
    assert (name, params) == ("snapkv", {"window": 8, "pooling": "avg"})
    assert method_spec(name, params) == "snapkv:window=8;pooling=avg"
    m = get_method("snapkv:window=8;pooling=avg")
    assert (m.window, m.pooling) == (8, "avg")
    assert get_method("snapkv:window=8", window=16).window == 16  # keywords override the spec
    assert get_method("dynamickv:r_max=5").r_max == 5.0 and isinstance(
        get_method("dynamickv:r_max=5").r_max, float
    )
    assert parse_method_spec("dynamickv") == ("dynamickv", {})
    with pytest.raises(UnknownMethodError):
        parse_method_spec("zip:window=8")
    with pytest.raises(BudgetError, match="unknown parameter 'windw'"):
        parse_method_spec("snapkv:windw=8")
    with pytest.raises(BudgetError, match="not an integer"):
        parse_method_spec("snapkv:window=eight")
    with pytest.raises(BudgetError, match="expected name=value"):
        parse_method_spec("snapkv:window")
    with pytest.raises(BudgetError, match="pooling"):
        parse_method_spec("snapkv:pooling=median")  # the method's own validation


@pytest.mark.parametrize("n,B,L,m,r_max", GRID)
@pytest.mark.parametrize("min_ratio", [0.0, 0.5])
def test_dynamickv_authors_rule_budget_exact(n, B, L, m, r_max, min_ratio):
    obs = make_obs(n, L, queries=min(8, n), seed=n * 31 + L)
    method = get_method("dynamickv", update_every=m, r_max=r_max, min_ratio=min_ratio)
    kept, method = run_method(method, obs, B)
    sizes = [k.shape[-1] for k in kept]
    if n <= B:
        assert sizes == [n] * L
        return
    w, base = 8, B - 8
    cap = int(min(r_max * base, n - w))
    assert sum(s - w for s in sizes) == min(base * L, cap * L)  # the global budget, exactly
    assert all(min(int(min_ratio * base), cap) <= s - w <= cap for s in sizes)  # the floor holds
    assert method.budgets() == sizes

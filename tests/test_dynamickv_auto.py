"""``dynamickv-auto`` (the recommended method): per model family, exactly the tokens of the method it
stands for, ``dynamickv-preference`` on Qwen2 and ``snapkv-decay`` elsewhere, and it says which ran."""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.cache import compressed_layers
from dynamickv.errors import BudgetError
from dynamickv.methods import RECOMMENDED, get_method
from dynamickv.methods.dynamickv_auto import ADAPTIVE_FAMILIES
from test_methods_reference import make_obs, run_method
from tiny import FAMILIES, tiny_model


def test_it_is_the_recommended_method():
    assert RECOMMENDED == "dynamickv-auto"
    assert ADAPTIVE_FAMILIES == ("qwen2",)


BRANCHES = [
    ("qwen2", "default", "dynamickv-preference", "preference"),
    ("llama", "default", "snapkv-decay", "uniform"),
    ("mistral", "default", "snapkv-decay", "uniform"),  # not measured: uniform
    ("", "default", "snapkv-decay", "uniform"),  # family unknown
    ("llama", "all", "dynamickv-preference", "preference"),
    ("qwen2", "none", "snapkv-decay", "uniform"),
    ("llama", "llama+qwen2", "dynamickv-preference", "preference"),
    ("Qwen2", "default", "dynamickv-preference", "preference"),
]


@pytest.mark.parametrize("budget", [24, 64, 130])
@pytest.mark.parametrize(("model_type", "families", "same_as", "allocation"), BRANCHES)
def test_keeps_exactly_the_tokens_of_the_method_it_stands_for(
    model_type, families, same_as, allocation, budget
):
    """Each branch is its method token for token, with the same per-layer budgets, so the two
    methods' measurements are this one's; the budgets add up to L x B."""
    obs = make_obs(300, 8, queries=8, seed=5)
    auto = get_method("dynamickv-auto", families=families)
    kept, _ = run_method(auto, obs, budget, model_type=model_type)
    reference = get_method(same_as)
    want, _ = run_method(reference, obs, budget, model_type=model_type)
    for a, b in zip(kept, want, strict=True):
        assert torch.equal(a, b)
    assert auto.budgets() == reference.budgets()
    assert sum(auto.budgets()) == budget * len(obs)
    assert auto.chosen_allocation == allocation


def test_the_adaptive_branch_is_not_uniform():
    """On Qwen2 the layers hold different counts (else the branch would be a no-op)."""
    auto = get_method("dynamickv-auto")
    run_method(auto, make_obs(300, 8, queries=8, seed=5), 64, model_type="qwen2")
    assert len(set(auto.budgets())) > 1


def test_parameters_reach_both_branches():
    obs = make_obs(200, 4, queries=16, seed=2)
    for model_type, spec in (
        ("qwen2", "dynamickv-preference:window=16;kernel=6;quiet_sinks=0;min_tokens=8"),
        ("llama", "snapkv-decay:window=16;kernel=6;quiet_sinks=0"),
    ):
        kept, _ = run_method(
            get_method("dynamickv-auto:window=16;kernel=6;quiet_sinks=0;min_tokens=8"),
            obs,
            48,
            model_type=model_type,
        )
        want, _ = run_method(get_method(spec), obs, 48, model_type=model_type)
        assert all(torch.equal(a, b) for a, b in zip(kept, want, strict=True))


@pytest.mark.parametrize("families", ["", " + ", "all+qwen2", "none+llama", "qwen", "qwen2,llama"])
def test_bad_families_are_refused(families):
    with pytest.raises(BudgetError, match="families"):
        get_method("dynamickv-auto", families=families)


@pytest.mark.parametrize(
    ("family", "same_as", "allocation"),
    [("qwen2", "dynamickv-preference", "preference"), ("llama", "snapkv-decay", "uniform")],
)
def test_through_a_real_prefill_the_cache_is_the_named_methods(family, same_as, allocation):
    """On a tiny model of each family, ``compress`` leaves exactly the cache of the method the family
    maps to (the model's ``config.model_type`` reaches the choice), and reports the branch."""
    model = tiny_model(family)
    ids = torch.randint(3, 256, (1, 160), generator=torch.Generator().manual_seed(3))
    caches, stats = {}, {}
    for name in ("dynamickv-auto", same_as):
        with compress(model, name, 40) as c:
            caches[name] = model(ids, use_cache=True).past_key_values
        stats[name] = c.stats
    assert stats["dynamickv-auto"].extra["allocation"] == allocation
    assert "allocation" not in stats[same_as].extra  # only dynamickv-auto has branches to report
    assert stats["dynamickv-auto"].layer_budgets == stats[same_as].layer_budgets
    for i in compressed_layers(caches[same_as]):
        a, b = caches["dynamickv-auto"].layers[i], caches[same_as].layers[i]
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_every_family_gets_a_branch():
    """A family of the tested set that is not listed runs the uniform branch, never an error."""
    for family in FAMILIES:
        model = tiny_model(family)
        ids = torch.randint(3, 256, (1, 96), generator=torch.Generator().manual_seed(4))
        with compress(model, "dynamickv-auto", 40) as c:
            model(ids, use_cache=True)
        assert c.stats.extra["allocation"] == ("preference" if family == "qwen2" else "uniform")

"""Benchmarks of a model spread over several devices (``dynamickv bench --device auto``).

The placement must give every layer a device, in contiguous, balanced blocks; the spread model must
be the same model (same init rule, same rotary frequencies) and compute what it computes on one
device. On this CPU "several devices" are several CPU entries: the hooks and the build run as they
do on GPUs, the placement is checked, and ``tests/test_multidevice.py`` runs the same on two GPUs.
"""

from __future__ import annotations

import pytest
import torch

from dynamickv import compress
from dynamickv.bench import build_model
from dynamickv.devices import peak_gib, placement, resolve


@pytest.mark.parametrize("layers,devices", [(80, 2), (80, 3), (32, 8), (7, 7), (5, 1)])
def test_placement_is_contiguous_and_balanced(layers, devices):
    plan = placement(layers, devices)
    assert len(plan) == layers
    assert plan == sorted(plan) and set(plan) == set(range(devices))  # contiguous, every device used
    sizes = [plan.count(d) for d in range(devices)]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_placement_refuses_more_devices_than_layers():
    with pytest.raises(ValueError, match="cannot spread 2 layers over 3 devices"):
        placement(2, 3)


def test_auto_is_the_cpu_without_gpus_and_memory_is_not_measured_there():
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    assert resolve("auto") == [torch.device("cpu")]
    assert peak_gib([torch.device("cpu"), torch.device("cpu")], 0) is None  # not 0.0: not measured


def test_a_spread_model_is_the_same_model():
    pytest.importorskip("accelerate")
    cpu = torch.device("cpu")
    spread = build_model("tiny", [cpu, cpu, cpu], torch.float32)
    one = build_model("tiny", "cpu", torch.float32)
    assert [spread.hf_device_map[f"model.layers.{i}"] for i in range(4)] == ["cpu"] * 4
    assert spread.hf_device_map["lm_head"] == "cpu"
    # initialised by the model's own rule, not left as whatever memory held
    torch.testing.assert_close(spread.model.rotary_emb.inv_freq, one.model.rotary_emb.inv_freq)
    torch.testing.assert_close(spread.model.norm.weight, torch.ones_like(spread.model.norm.weight))
    std = spread.model.layers[2].mlp.up_proj.weight.std().item()
    assert abs(std - one.config.initializer_range) < 0.002
    # with the same weights it computes the same answers, compressed too
    spread.load_state_dict(one.state_dict())
    ids = torch.randint(3, 256, (1, 200), generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (one, spread):
        with compress(model, "snapkv", 48) as c:
            outs.append((model.generate(ids, max_new_tokens=8, do_sample=False), c.stats.kept_per_layer))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1] == [48] * 4


@pytest.mark.parametrize("where", ["prefill", "static decode"])
def test_an_oom_is_recorded_with_where_it_struck(monkeypatch, where):
    from dynamickv import bench, fast

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    if where == "prefill":  # measure imports both from dynamickv.fast when it runs
        monkeypatch.setattr(fast, "chunked_prefill", oom)
    else:
        monkeypatch.setattr(fast.StaticDecoder, "generate", oom)
    model = build_model("tiny", "cpu", torch.float32)
    row = bench.measure(model, "snapkv", 64, 256, 4, [torch.device("cpu")], 128, False, 0, 4)
    assert row["oom"] is True and row["oom_in"] == where
    assert ("prefill_s" in row) == (where != "prefill")  # what finished before it is kept


@pytest.mark.parametrize(
    "error,recorded",
    [
        # what the driver raises when it cannot make a graph's stream: not a torch.OutOfMemoryError
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("shapes cannot be multiplied"), False),
    ],
)
def test_a_driver_oom_is_recorded_and_other_errors_are_not(monkeypatch, error, recorded):
    from dynamickv import bench, fast

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(fast.StaticDecoder, "generate", fail)
    model = build_model("tiny", "cpu", torch.float32)
    args = (model, "snapkv", 64, 256, 4, [torch.device("cpu")], 128, False, 0, 4)
    if recorded:
        row = bench.measure(*args)
        assert row["oom"] is True and row["oom_in"] == "static decode"
    else:
        with pytest.raises(RuntimeError, match="shapes"):
            bench.measure(*args)

"""The serving benchmark: ``bench --batch`` through the real CLI, the max-batch search, decode-mode
variants, and the summary figures computed from a run's JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dynamickv.bench_profile import decode_variants, gemv_roofline, profile_step
from dynamickv.bench_serving import prefill, search_max_batch
from dynamickv.bench_tables import markdown, merge, summary, worse_than_plain_p
from tiny import one_thread, tiny_model

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dynamickv.cli", *args], capture_output=True, text=True, env=env
    )


def test_bench_batch_runs_on_the_tiny_config(tmp_path):
    out = tmp_path / "serving.json"
    proc = _cli(
        "bench", "--config", "tiny", "--device", "cpu", "--batch", "3", "--lengths", "160",
        "--methods", "fullkv,dynamickv", "--budget", "48", "--steps", "4", "--out", str(out),
        "--mode", "fused:matmul",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))["rows"]
    assert [r["method"] for r in rows] == ["fullkv-plain", "fullkv", "dynamickv"]
    assert all(r["prefill_peak_gib"] is None for r in rows)  # not measured on CPU: null, not 0.0
    for r in rows:
        assert r["rows"] == 3 and r["tokens_per_s"] > 0 and r["ttft_s"] > 0 and "error" not in r
    assert rows[2]["kept_mean"] == 48 and rows[2]["cache_mib_per_request"] < rows[0]["cache_mib_per_request"]
    assert rows[2]["mode"] == "fused:matmul"  # the attention kernel asked for is the one measured


@pytest.mark.parametrize("mode", ["functional", "fused:matmul"])
def test_bench_batch_1_measures_the_decode_mode_asked_for(tmp_path, mode):
    out = tmp_path / "bench.json"
    proc = _cli(
        "bench", "--config", "tiny", "--device", "cpu", "--lengths", "160", "--methods", "snapkv",
        "--budget", "48", "--steps", "4", "--mode", mode, "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads(out.read_text())["rows"] if r["method"] == "snapkv"]
    assert rows and all(r["decode_static_mode"] == mode for r in rows)


@pytest.mark.parametrize(("budget", "kept"), [(48, 48), (1024, 511)])
def test_bench_on_a_sliding_window_shape_decodes_past_the_window(tmp_path, budget, kept):
    """``tiny-sliding`` (Mistral-7B-v0.1's layout: every layer slides, window 512): the static decoder
    runs on compressed sliding layers; a budget above the window keeps the window's last 511 tokens,
    what the model itself can still see, so it costs no more than the uncompressed cache."""
    out = tmp_path / "bench.json"
    proc = _cli(
        "bench", "--config", "tiny-sliding", "--device", "cpu", "--lengths", "700", "--methods",
        "fullkv,snapkv", "--budget", str(budget), "--steps", "4", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    full, snap = json.loads(out.read_text())["rows"]
    assert snap["kept_mean"] == kept and snap["decode_static_ms"] > 0
    assert (snap["cache_bytes"] == full["cache_bytes"]) == (kept == 511)


def test_bench_splitkv_without_a_gpu_is_one_line(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = _cli("bench", "--config", "tiny", "--device", "cpu", "--mode", "compiled:splitkv", env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: decode attention 'splitkv' cannot run here")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch", "2", "--methods", "nope"], "unknown method 'nope'"),
        (["--batch", "2", "--mode", "turbo"], "unknown decode mode 'turbo'"),
        (["--batch", "2", "--mode", "compiled:flash"], "unknown decode attention 'flash'"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--budget", "0"], "--budget must be at least 1"),
        (["--batch", "4", "--kvpress-path", "/tmp"], "kvpress rows are batch 1"),
    ],
)
def test_bench_batch_bad_arguments_one_line(args, message):
    proc = _cli("bench", "--config", "tiny", "--device", "cpu", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("limit,estimate", [(100, 60), (100, 300), (7, 7), (1, 50)])
def test_max_batch_search_finds_the_largest_that_fits(limit, estimate):
    def trial(rows):
        if rows > limit:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"rows": rows}

    found = search_max_batch(trial, estimate, tolerance=0.0, max_trials=20)
    assert found["rows"] == limit and found["best"] == {"rows": limit}
    assert found["failed_at"] == limit + 1


def test_max_batch_search_raises_other_errors():
    def trial(rows):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        search_max_batch(trial, 8)


def test_decode_variants_agree_and_record_failures():
    model = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 200), generator=torch.Generator().manual_seed(2))
    req = prefill(model, "dynamickv", 48, ids)
    modes = ["plain", "fused", "functional", "fused:matmul", "bogus"]
    rows = decode_variants(model, req, modes, 6, floor_ms=1.0)
    assert [r["mode"] for r in rows[:4]] == modes[:4]
    for r in rows[:4]:
        assert r["tokens_agree"] == r["tokens_compared"] == 8 and r["x_floor"] == r["decode_ms"]
    assert "unknown decode mode" in rows[4]["error"]
    roof = gemv_roofline(model)
    assert roof["gemv_kernels"] == 4 * 8 + 1 and roof["gemv_ms"] > 0
    profile = profile_step(model, req, "fused")  # on CPU: no kernels to see, the wall time only
    assert profile["mode"] == "fused" and profile["eager_wall_ms_per_step"] > 0


def _b1(mode, ms, agree=64, **extra):
    """A batch-1 DynamicKV row at 128k (floor 4 ms) as ``h200_serving.py`` writes it."""
    return {
        "method": "dynamickv",
        "tokens": 131072,
        "mode": mode,
        "decode_ms": ms,
        "floor_ms": 4.0,
        "x_floor": ms / 4.0,
        "tokens_agree": agree,
        "tokens_compared": 64,
        **extra,
    }


def _run():
    lengths = {"32k": 32768, "128k": 131072, "512k": 524288}

    def serve(method, tps, tokens=32768):
        return {"method": method, "tokens": tokens, "tokens_per_s": tps, "max_batch": 10, "decode_ms": 1.0}

    return {
        "meta": {"lengths": lengths, "date": "d", "device": "gpu"},
        "parts": {"long_512k": {"skipped": "time"}},
        "batch1": [
            _b1("plain", 8.0),
            _b1("fused", 6.0),
            _b1("compiled", 4.8),
            _b1("compiled-wrong", 4.0, agree=30),
        ],
        "serving": [
            serve("fullkv-plain", 500.0),
            serve("fullkv", 900.0),
            serve("dynamickv", 12000.0),
            serve("snapkv", 13500.0),
            {"method": "pyramidkv", "tokens": 32768, "error": "boom"},
        ],
        "prefill": [
            {"method": "fullkv-plain", "tokens": 131072, "ttft_s": 10.0, "prefill_peak_gib": 30.0},
            {"method": "dynamickv", "tokens": 131072, "ttft_s": 10.1, "prefill_peak_gib": 7.5},
        ],
        "kvpress": [
            {"method": "kvpress-snapkv", "tokens": 131072, "prefill_peak_gib": 15.0, "decode_eager_ms": 40.0}
        ],
    }


def test_summary_is_computed_from_the_rows():
    s = summary(_run())
    assert s["decode_static_x_floor"] == pytest.approx(1.2) and s["decode_static_mode"] == "compiled"
    assert s["throughput_ratio_32k"] == pytest.approx(13500 / 900)
    assert s["throughput_best_compressed_32k"]["method"] == "snapkv"
    assert s["throughput_ratio_128k"] is None
    assert s["prefill_ratio_128k"] == pytest.approx(1.01)
    assert s["prefill_peak_vs_kvpress_snapkv_128k"] == pytest.approx(0.5)
    assert s["context_512k_runs"] is None  # skipped: not measured, not failed
    met = {k: v["met"] for k, v in s["targets"].items()}
    assert met == {
        "throughput_ratio_32k": True,
        "decode_static_x_floor": True,
        "prefill_ratio_128k": True,
        "prefill_peak_vs_kvpress_snapkv_128k": True,
        "context_512k_runs": None,
    }
    text = markdown(_run())
    assert "| snapkv | 32768 | 10 |" in text and "boom" in text and "compiled-wrong" in text


def test_runs_merge_into_one_summary():
    main = _run()
    main["parts"] = {"long_512k": {"skipped": "time"}}
    long = {
        "meta": {},
        "parts": {"long_512k": {"seconds": 160.0}},
        "batch1": [
            {"method": "dynamickv", "tokens": 524288, "mode": "fused", "decode_ms": 5.0, "x_floor": 1.3}
        ],
        "prefill": [{"method": "dynamickv", "tokens": 524288, "ttft_s": 150.0, "prefill_peak_gib": 30.0}],
    }
    s = summary(merge([main, long]))
    assert s["context_512k_runs"] is True and s["context_512k"]["prefill_s"] == 150.0
    assert s["throughput_ratio_32k"] == pytest.approx(13500 / 900)


def test_a_later_run_replaces_the_parts_it_measured_again():
    main = _run()  # legacy rows, no part tags: the part is inferred from their list and length
    again = {
        "meta": {"date": "later"},
        "parts": {
            "b1_128k": {"seconds": 50.0},
            "prefill_128k": {"seconds": 80.0},
            "kvpress": {"skipped": "t"},
        },
        "batch1": [_b1("compiled:flex", 4.4, part="b1_128k")],
        "prefill": [
            {
                "method": "dynamickv",
                "tokens": 131072,
                "ttft_s": 9.0,
                "prefill_peak_gib": 7.0,
                "part": "b1_128k",
            }
        ],
        "prefill_repeats": [
            {"method": m, "tokens": 131072, "repeat": i, "ttft_s": t, "part": "prefill_128k"}
            for i, (a, b) in enumerate([(10.0, 10.1), (10.4, 10.2), (10.0, 10.3)])
            for m, t in (("fullkv-plain", a), ("dynamickv", b))
        ],
    }
    merged = merge([main, again])
    modes = {r["mode"] for r in merged["batch1"]}
    assert modes == {"compiled:flex"}  # the old 128k rows are gone, not mixed with the new ones
    assert len(merged["serving"]) == 5 and len(merged["kvpress"]) == 1  # not re-measured: kept
    assert [r["date"] for r in merged["meta"]["runs"]] == ["d", "later"]
    s = summary(merged)
    assert s["decode_static_x_floor"] == pytest.approx(1.1) and s["decode_static_mode"] == "compiled:flex"
    assert s["prefill_ratio_128k"] == pytest.approx(10.2 / 10.0)  # medians, not the single prefills
    assert s["prefill_repeats_128k"]["pair_ratio_max"] == pytest.approx(1.03)
    assert s["prefill_peak_vs_kvpress_snapkv_128k"] == pytest.approx(7.0 / 15.0)
    assert "prefill_128k" in s["prefill_ratio_source"]


def test_a_mode_counts_for_the_floor_when_a_real_model_check_agrees():
    run = _run()
    run["batch1"].append(_b1("compiled:flex", 4.4, agree=9))
    assert summary(run)["decode_static_mode"] == "compiled"  # random weights: it disagrees early
    check = {
        "agreement_meta": {"model": "smollm2-135m", "dtype": "bfloat16"},
        "agreement_summary": {
            "compiled:flex": {"prompts": 4, "identical": 4, "tokens_agree": 256, "tokens_compared": 256},
            "compiled-wrong": {"prompts": 4, "identical": 3, "tokens_agree": 250, "tokens_compared": 256},
        },
    }
    s = summary(merge([run, check]))
    assert s["decode_static_mode"] == "compiled:flex" and s["decode_static_x_floor"] == pytest.approx(1.1)
    assert (
        "smollm2-135m, bfloat16, 4 prompts x 64 tokens: identical to plain" in s["decode_static_checked_by"]
    )


def test_a_mode_that_parts_from_plain_counts_only_if_no_further_from_float32():
    run = _run()
    run["batch1"].append(_b1("compiled:matmul", 4.4, agree=9))

    def check(identical, agree):
        def s(ident, tok_agree, ref_ident, ref_agree):
            return {"prompts": 4, "identical": ident, "tokens_agree": tok_agree, "tokens_compared": 256,
                    "reference_identical": ref_ident, "reference_agree": ref_agree}  # fmt: skip

        return {
            "agreement_meta": {"model": "smollm2-135m", "dtype": "bfloat16", "reference": "float32"},
            "agreement_summary": {"plain": s(4, 256, 2, 200), "compiled:matmul": s(2, 180, identical, agree)},
        }

    assert summary(merge([run, check(2, 200)]))["decode_static_mode"] == "compiled:matmul"
    assert summary(merge([run, check(3, 230)]))["decode_static_mode"] == "compiled:matmul"
    assert summary(merge([run, check(1, 230)]))["decode_static_mode"] == "compiled"  # further from float32
    assert summary(merge([run, check(2, 199)]))["decode_static_mode"] == "compiled"


def test_fed_the_reference_tokens_a_mode_counts_unless_significantly_worse_than_plain():
    """Where the check fed every mode the float32 reference's tokens, that decides (free-running
    agreement counts where chaos starts after a near-tie): logits no further from the reference
    than plain's, and picks not significantly worse than plain's on the paired steps."""
    run = _run()
    run["batch1"].append(_b1("compiled:splitkv", 4.4, agree=9))

    def check(only_plain, only_mode, err):
        def s(ref_ident, top, e, paired):
            return {"prompts": 4, "identical": 1, "tokens_agree": 100, "tokens_compared": 256,
                    "reference_identical": ref_ident, "reference_agree": 150,
                    "forced_top1": top, "forced_steps": 252, "forced_err": e, **paired}  # fmt: skip

        paired = {"forced_only_plain": only_plain, "forced_only_mode": only_mode}
        return {
            "agreement_meta": {"model": "smollm2-135m", "dtype": "bfloat16", "reference": "float32"},
            "agreement_summary": {
                "plain": s(3, 240, 0.02, {"forced_only_plain": 0, "forced_only_mode": 0}),
                "compiled:splitkv": s(1, 240 - only_plain + only_mode, err, paired),
            },
        }

    chosen = summary(merge([run, check(6, 3, 0.015)]))  # 3 fewer picks: p = 0.25
    assert chosen["decode_static_mode"] == "compiled:splitkv"  # fewer free-running prompts identical
    assert "plain 6, this mode 3: one-sided sign test p = 0.25" in chosen["decode_static_checked_by"]
    assert summary(merge([run, check(9, 1, 0.015)]))["decode_static_mode"] == "compiled"  # p = 0.011
    assert summary(merge([run, check(3, 6, 0.021)]))["decode_static_mode"] == "compiled"  # logits further


def test_sign_test_p():
    assert worse_than_plain_p({"forced_only_plain": 0, "forced_only_mode": 0}) == 1.0
    assert worse_than_plain_p({"forced_only_plain": 2, "forced_only_mode": 0}) == 0.25
    assert worse_than_plain_p({"forced_only_plain": 9, "forced_only_mode": 1}) == pytest.approx(11 / 1024)

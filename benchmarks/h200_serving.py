"""Issue 14 on one GPU, in one call: batch-1 decode near the floor, batched serving, peers, 512k.

Run from the repository root on the GPU machine (``benchmarks/h200_serving.sh`` sets the
environment). Parts run in this order, each with an estimated duration; a part whose estimate
exceeds the time left (``--budget-s``) is skipped and recorded as such, a part that fails records
its error and the run goes on. ``$OUT/serving.json`` is rewritten after every part, so a killed
run keeps what it measured.

======== ======= ================================================================================
part     est. s  what
======== ======= ================================================================================
setup    35      build the random-init model (bf16), measure copy bandwidth
roofline 10      a CUDA graph of only the step's GEMVs at batch 1 (the GEMV roofline)
b1_128k  130     prefill full KV (plain transformers) and DynamicKV at 128k (TTFT, peak memory);
                 DynamicKV batch-1 decode in every mode (plain, functional, fused, compiled, and
                 the fused/compiled steps with the other attention kernels) with the floor; kernel
                 profiles of the plain, fused and compiled steps
prefill_128k 100 TTFT at 128k, full KV (plain transformers) and DynamicKV alternating, after one
                 warm-up prefill each: the prefill ratio from medians, not from single prefills
serve_32k 100    largest batch of 32k contexts and its decode tokens/s: full KV (plain
                 transformers and static), DynamicKV, SnapKV, PyramidKV at B; TTFT per request
b1_32k   35      DynamicKV batch-1 decode in every mode at 32k
serve_128k 70    largest batch of 128k contexts: full KV (plain and static), DynamicKV
kvpress  80      kvpress 0.5.5 SnapKV and PyramidKV (configured to build its pyramid) at 32k and
                 128k, batch 1 (its pipeline compresses one context per call), own process
long_512k 175    DynamicKV at 524,288 tokens: prefill, peak memory, fused graph decode
======== ======= ================================================================================

Rows of a batch are copies of a few distinct prefilled requests (2 per method at 32k, 1 at 128k),
each compressed at its own length: decode cost does not depend on the values, and every row
holds and reads its own copy. ``--quick`` runs the same parts on the tiny config on CPU (a smoke
test of this script, in about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dynamickv import bench_tables  # noqa: E402
from dynamickv.bench import CONFIGS, build_model, copy_bandwidth, environment  # noqa: E402
from dynamickv.bench_batch import distinct_requests, method_rows  # noqa: E402
from dynamickv.bench_profile import decode_variants, gemv_roofline, profile_step  # noqa: E402
from dynamickv.bench_serving import prefill, release  # noqa: E402

ESTIMATES = {
    "setup": 35,
    "roofline": 10,
    "b1_128k": 130,
    "prefill_128k": 100,
    "serve_32k": 100,
    "b1_32k": 35,
    "serve_128k": 70,
    "kvpress": 80,
    "long_512k": 175,
}
MODES = [
    "plain",
    "functional",
    "fused",
    "compiled",
    "fused:matmul",
    "compiled:matmul",
    "compiled:flex",
    "compiled:splitkv",
]
PROFILED = ["plain", "fused", "compiled", "compiled:matmul", "compiled:flex", "compiled:splitkv"]


class Run:
    def __init__(self, args) -> None:
        self.args, self.t0 = args, time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.quick = args.quick
        self.device = "cpu" if args.quick else "cuda"
        self.lengths = (
            {"32k": 512, "128k": 1024, "512k": 2048}
            if args.quick
            else {"32k": 32768, "128k": 131072, "512k": 524288}
        )
        self.config = "tiny" if args.quick else args.config
        self.budget = 64 if args.quick else args.budget
        self.steps = 8 if args.quick else args.steps
        self.result = {
            "meta": {"budget_s": args.budget_s, "quick": args.quick, "lengths": self.lengths},
            "notes": [
                "rows of a batch are copies of a few distinct prefilled requests, each compressed at its own "
                "length; decode cost does not depend on the values, every row holds and reads its own copy",
                "TTFT is one request's prefill (compression included) and first greedy token, alone",
                "fullkv-plain: plain transformers (DynamicCache, eager loop); fullkv: the full cache in "
                "dynamickv's static decoder",
                "kvpress rows are batch 1: its pipeline compresses one context per call",
            ],
            "parts": {},
            "batch1": [],
            "profiles": [],
            "serving": [],
            "prefill": [],
            "prefill_repeats": [],
            "kvpress": [],
        }
        self.current = "setup"
        self.requests: dict[str, dict] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        for key, rows in self.result.items():  # each row says which part measured it (for merging)
            if isinstance(rows, list) and key != "notes":
                for row in rows:
                    if isinstance(row, dict):
                        row.setdefault("part", self.current)
        (self.out / "serving.json").write_text(json.dumps(self.result, indent=1, default=str))

    def part(self, name: str, fn, estimate: float | None = None) -> None:
        if name not in self.args.parts:
            return
        est = (estimate or ESTIMATES[name]) * (0.3 if self.quick else 1.0)
        record = {"estimate_s": round(est, 1)}
        self.result["parts"][name] = record
        if est > self.left():
            record["skipped"] = f"estimated {est:.0f} s, {self.left():.0f} s left"
            print(f"[{name}] skipped: {record['skipped']}", flush=True)
            self.save()
            return
        print(f"[{name}] start (est. {est:.0f} s, {self.left():.0f} s left)", flush=True)
        self.save()  # rows so far keep the previous part's name
        self.current = name
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # recorded, the run goes on
            record["error"] = f"{type(e).__name__}: {e}"[:800]
            record["traceback"] = traceback.format_exc()[-3000:]
            print(f"[{name}] error: {record['error']}", flush=True)
        record["seconds"] = round(time.perf_counter() - t, 1)
        print(f"[{name}] done in {record['seconds']} s", flush=True)
        release(self.device)
        self.save()

    # -- parts ----------------------------------------------------------------------------------
    def setup(self) -> None:
        dtype = torch.float32 if self.quick else torch.bfloat16
        self.model = build_model(self.config, self.device, dtype)
        self.weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.bw = copy_bandwidth(self.device) if not self.quick else 1e11
        meta = environment(self.config, self.budget, self.device, self.model, self.bw, self.weights)
        self.result["meta"].update(meta)

    def roofline(self) -> None:
        r = gemv_roofline(self.model)
        r["copy_bandwidth_gbs"] = self.bw / 1e9
        r["weights_floor_ms"] = self.weights / self.bw * 1e3
        self.result["roofline"] = r

    def _ids(self, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.model.config.vocab_size, (1, n), generator=g).to(self.device)

    def _prefill(self, key: str, method: str, length: str) -> dict:
        n = self.lengths[length]
        req = prefill(self.model, method, self.budget, self._ids(n))
        self.requests[key] = req
        row = {k: v for k, v in req.items() if k not in ("cache", "first")}
        self.result["prefill"].append({"method": method, "tokens": n, **row})
        return req

    def _floor(self, req: dict) -> float:
        return (self.weights + req["cache_bytes"]) / self.bw * 1e3

    def _batch1(self, key: str, length: str, modes: list[str]) -> None:
        req = self.requests[key]
        rows = decode_variants(self.model, req, modes, self.steps, self._floor(req))
        for r in rows:
            r.update(method="dynamickv", tokens=self.lengths[length], batch=1, cache_bytes=req["cache_bytes"])
            self.result["batch1"].append(r)
            print(json.dumps(r), flush=True)

    def b1_128k(self) -> None:
        self._prefill("fullkv-plain/128k", "fullkv-plain", "128k")
        self._prefill("dynamickv/128k", "dynamickv", "128k")
        self._batch1("dynamickv/128k", "128k", MODES)
        for mode in PROFILED:
            try:
                p = profile_step(self.model, self.requests["dynamickv/128k"], mode)
            except Exception as e:
                p = {"mode": mode, "error": f"{type(e).__name__}: {e}"[:500]}
            p["tokens"] = self.lengths["128k"]
            self.result["profiles"].append(p)

    def prefill_128k(self, repeats: int = 3) -> None:
        self.requests.pop("fullkv-plain/128k", None)
        n = self.lengths["128k"]
        ids = self._ids(n, seed=7)
        for method in ("fullkv-plain", "dynamickv"):  # warm-up: kernels, cuBLAS and allocator state
            release(self.device)
            prefill(self.model, method, self.budget, ids)
        for rep in range(repeats):
            for method in ("fullkv-plain", "dynamickv"):
                release(self.device)
                req = prefill(self.model, method, self.budget, ids)
                row = {"method": method, "tokens": n, "repeat": rep, "ttft_s": req["ttft_s"]}
                del req
                self.result["prefill_repeats"].append(row)
                print(json.dumps(row), flush=True)

    def _serve(self, length: str, methods: list[str], distinct: int) -> None:
        n = self.lengths[length]
        for method in methods:
            if time.perf_counter() - self.t0 > self.args.budget_s:
                self.result["serving"].append({"method": method, "tokens": n, "skipped": "time budget"})
                continue
            plain = method == "fullkv"
            key = f"{'fullkv-plain' if plain else method}/{length}"
            if key in self.requests:
                requests = [self.requests[key]]
            else:
                requests = distinct_requests(
                    self.model,
                    "fullkv-plain" if plain else method,
                    self.budget,
                    n,
                    1 if plain else distinct,
                    self.device,
                    seed=1,
                )
                if method == "dynamickv":
                    self.requests[key] = requests[0]
            for row in method_rows(self.model, method, self.budget, n, None, self.steps // 4 or 4, requests):
                self.result["serving"].append(row)
                print(json.dumps(row), flush=True)
            del requests
            self.requests.pop("fullkv-plain/" + length, None)
            release(self.device)
            self.save()

    def serve_32k(self) -> None:
        self.requests.pop("fullkv-plain/128k", None)
        self._serve("32k", ["fullkv", "dynamickv", "snapkv", "pyramidkv"], 2)

    def b1_32k(self) -> None:
        if "dynamickv/32k" not in self.requests:
            self._prefill("dynamickv/32k", "dynamickv", "32k")
        self._batch1("dynamickv/32k", "32k", MODES)

    def serve_128k(self) -> None:
        self.requests.pop("dynamickv/32k", None)
        self._serve("128k", ["fullkv", "dynamickv"], 1)
        self.requests.clear()

    def kvpress(self) -> None:
        site = self.args.kvsite
        if not site or not Path(site).is_dir():
            raise FileNotFoundError(f"--kvsite / $KVSITE {site!r} is not a directory")
        self.requests.clear()
        release(self.device)
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "kvpress_peer.py"),
            "--config",
            json.dumps(CONFIGS[self.config]),
            "--budget",
            str(self.budget),
            "--lengths",
            f"{self.lengths['32k']},{self.lengths['128k']}",
            "--methods",
            "snapkv,pyramidkv",
            "--steps",
            "24",
        ]
        env = {**os.environ, "PYTHONPATH": site}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(30, self.left()))
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        for r in lines:
            if "cache_bytes" in r:
                r["floor_ms"] = (self.weights + r["cache_bytes"]) / self.bw * 1e3
        self.result["kvpress"] = lines
        (self.out / "kvpress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if proc.returncode:
            raise RuntimeError(f"kvpress_peer exited {proc.returncode}: {proc.stderr[-1500:]}")

    def long_512k(self) -> None:
        self.requests.clear()
        release(self.device)
        self._prefill("dynamickv/512k", "dynamickv", "512k")
        self._batch1("dynamickv/512k", "512k", ["fused"])
        self.requests.clear()

    def estimate_512k(self) -> float:
        ttft = [
            p["ttft_s"]
            for p in self.result["prefill"]
            if p["method"] == "dynamickv" and p["tokens"] == self.lengths["128k"]
        ]
        return 14 * ttft[0] + 20 if ttft else ESTIMATES["long_512k"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget for the whole run")
    ap.add_argument("--parts", default=",".join(ESTIMATES), help="comma-separated parts (setup always runs)")
    ap.add_argument("--config", default="llama-3.1-8b")
    ap.add_argument("--budget", type=int, default=1024, help="B, tokens kept per layer per KV head")
    ap.add_argument("--steps", type=int, default=64, help="batch-1 decode steps timed")
    ap.add_argument("--kvsite", default=os.environ.get("KVSITE", ""))
    ap.add_argument("--quick", action="store_true", help="tiny config on CPU (smoke test)")
    args = ap.parse_args()
    args.parts = {"setup", *args.parts.split(",")}
    run = Run(args)
    print("estimated seconds per part: " + ", ".join(f"{k} {v}" for k, v in ESTIMATES.items()), flush=True)
    run.part("setup", run.setup)
    if not hasattr(run, "model"):
        sys.exit("setup failed; see serving.json")
    run.part("roofline", run.roofline)
    run.part("b1_128k", run.b1_128k)
    run.part("prefill_128k", run.prefill_128k)
    run.part("serve_32k", run.serve_32k)
    run.part("b1_32k", run.b1_32k)
    run.part("serve_128k", run.serve_128k)
    run.part("kvpress", run.kvpress)
    run.part("long_512k", run.long_512k, run.estimate_512k())
    run.result["meta"]["total_s"] = round(time.perf_counter() - run.t0, 1)
    run.save()
    summary = bench_tables.summary(run.result)
    (run.out / "h200_summary.json").write_text(json.dumps(summary, indent=1))
    tables = bench_tables.markdown(run.result)
    (run.out / "tables.md").write_text(tables)
    print(tables)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

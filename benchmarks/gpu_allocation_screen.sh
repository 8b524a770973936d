#!/usr/bin/env bash
# Issue 12's allocation screen in one or two calls on the GPU machine: layer-adaptive candidates
# against uniform SnapKV with the same scoring, on RULER sets no earlier choice has seen.
#
#   stage 1 (seed 4004): every candidate x B in {64, 128, 256} on both models;
#   select:  benchmarks/select_robust.py --against UNIFORM (the worst-case rule, fixed before the run);
#   stage 2 (seed 5005): the winner, today's recommendation and uniform SnapKV on fresh RULER sets of
#            both models, and NIAH to 8k on Qwen.
#
# Carried beforehand as benchmarks/gpu_quality.sh describes (pieces, wheels, RULER cache files).
# OUT=... bash benchmarks/gpu_allocation_screen.sh; a second call with the same machine resumes every
# step (`--resume`), so a run cut by DEADLINE loses nothing. Results: $OUT/screen.tar.gz.
source "$(dirname "$0")/gpu_common.sh"
BUDGETS=64,128,256
UNIFORM="snapkv:window=8;pooling=forward;kernel=12"
ROBUST="dynamickv:pooling=forward;kernel=12;min_ratio=0.5"
CANDIDATES="$ROBUST,dynamickv:pooling=forward;kernel=12;min_ratio=0.75,\
dynamickv:allocation=candidates;pooling=forward;kernel=12;min_ratio=0.5,\
dynamickv:pooling=forward;kernel=12;min_ratio=0.5;heads=adaptive"
SAMPLES_SMOL=12 SAMPLES_QWEN=6 CONFIRM_SMOL=16 CONFIRM_QWEN=8 NIAH_LENGTHS=1024,2048,4096,8192
if [ "${DRY:-0}" = 1 ]; then
  QWEN=$SMOL QLEN=4096 SAMPLES_SMOL=1 SAMPLES_QWEN=1 CONFIRM_SMOL=1 CONFIRM_QWEN=1 NIAH_LENGTHS=1024 BUDGETS=64
fi
export BUDGETS
resume() { [ -f "$RUNS/$1/config.json" ] && echo --resume; }
METHODS="$CANDIDATES,$UNIFORM"
export METHODS
step screen_smol 200 evaluate screen_smol "$SMOL" ruler 4096 --samples "$SAMPLES_SMOL" --seed 4004 $(resume screen_smol)
step screen_qwen 250 evaluate screen_qwen "$QWEN" ruler "$QLEN" --samples "$SAMPLES_QWEN" --seed 4004 $(resume screen_qwen)
if [ -f "$RUNS/screen_smol/metrics.json" ] && [ -f "$RUNS/screen_qwen/metrics.json" ]; then
  python3 benchmarks/select_robust.py "$RUNS/screen_smol" "$RUNS/screen_qwen" --against "$UNIFORM" --budgets "$BUDGETS" | tee "$RUNS/selection.txt"
  WINNER=$(sed -n 's/^recommended: //p' "$RUNS/selection.txt")
  METHODS=$(printf '%s\n' "$WINNER" "$ROBUST" "$UNIFORM" | awk '!seen[$0]++' | paste -sd, -)
  export METHODS
  step confirm_smol 150 evaluate confirm_smol "$SMOL" ruler 4096 --samples "$CONFIRM_SMOL" --seed 5005 $(resume confirm_smol)
  step confirm_qwen 200 evaluate confirm_qwen "$QWEN" ruler "$QLEN" --samples "$CONFIRM_QWEN" --seed 5005 $(resume confirm_qwen)
  step niah_qwen 80 evaluate confirm_niah_qwen "$QWEN" niah "$NIAH_LENGTHS" $(resume confirm_niah_qwen)
fi
tar -czf "$OUT/screen.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

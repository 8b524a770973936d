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
# SCREEN=pooling: the second screen (same sets, same rule): SnapKV's uniform budgets with `decay`
# pooling (a fading forward loan, half-life k = 12) against the recommended forward pooling
P="" ES=200 EQ=250 CS=150 CQ=200 EN=80 # step estimates, seconds
if [ "${SCREEN:-allocation}" = pooling ]; then
  P=pool_ CANDIDATES="snapkv:window=8;pooling=decay;kernel=12" ROBUST="snapkv:window=8;pooling=decay;kernel=12"
  ES=120 EQ=90 CS=110 CQ=90 EN=50
fi
# SCREEN=sinks: the third screen (same sets, same rule): the attention sink's first 4 tokens lend
# nothing (`quiet_sinks=4`) under decay and forward pooling, and DynamicKV's allocation with that
# scoring; confirmed with decay pooling whichever wins
if [ "${SCREEN:-allocation}" = sinks ]; then
  P=sinks_ ROBUST="snapkv:window=8;pooling=decay;kernel=12;quiet_sinks=4"
  CANDIDATES="$ROBUST,snapkv:window=8;pooling=forward;kernel=12;quiet_sinks=4,\
dynamickv:pooling=decay;kernel=12;min_ratio=0.5;quiet_sinks=4"
  ES=200 EQ=200 CS=150 CQ=160 EN=60
fi
# SCREEN=preference: the fourth screen (same sets, same rule), layer- and head-adaptive budgets with
# the recommended scoring (decay, quiet sinks) against uniform `snapkv-decay`: CAKE's layer preference
# (entropy x variance, arXiv 2503.12491) alone and with a floor, DynamicKV's allocation with a floor
# of 3/4, and Ada-KV's head budgets on uniform layers. Also times the prefill of the scorings (TTFT).
if [ "${SCREEN:-allocation}" = preference ]; then
  D="pooling=decay;kernel=12;quiet_sinks=4"
  P=pref_ UNIFORM="snapkv:window=8;$D" ROBUST="snapkv:window=8;$D"
  CANDIDATES="dynamickv:$D;allocation=preference,dynamickv:$D;allocation=preference;min_ratio=0.5,\
dynamickv:$D;min_ratio=0.75,snapkv:window=8;$D;heads=adaptive"
  ES=260 EQ=260 CS=120 CQ=130 EN=50
fi
# SCREEN=preference2: the fifth screen, after the fourth found CAKE's shares ahead on Qwen (+6.6 / +2.5
# / +5.9) and behind on SmolLM2 at B = 64 (-4.3, layers left with 12 tokens): flatter shares (tau = 2,
# the square root of each factor), with and without a floor, and a floor counted in tokens
if [ "${SCREEN:-allocation}" = preference2 ]; then
  D="pooling=decay;kernel=12;quiet_sinks=4"
  P=pref2_ UNIFORM="snapkv:window=8;$D" ROBUST="snapkv:window=8;$D"
  CANDIDATES="dynamickv:$D;allocation=preference;tau1=2;tau2=2,\
dynamickv:$D;allocation=preference;tau1=2;tau2=2;min_ratio=0.5,dynamickv:$D;allocation=preference;min_tokens=32"
  ES=170 EQ=120 CS=140 CQ=100 EN=46
fi
SAMPLES_SMOL=12 SAMPLES_QWEN=6 CONFIRM_SMOL=16 CONFIRM_QWEN=8 NIAH_LENGTHS=1024,2048,4096,8192
if [ "${DRY:-0}" = 1 ]; then
  QWEN=$SMOL QLEN=4096 SAMPLES_SMOL=1 SAMPLES_QWEN=1 CONFIRM_SMOL=1 CONFIRM_QWEN=1 NIAH_LENGTHS=1024 BUDGETS=64
fi
export BUDGETS
METHODS="$CANDIDATES,$UNIFORM"
export METHODS
step ${P}screen_smol $ES evaluate ${P}screen_smol "$SMOL" ruler 4096 --samples "$SAMPLES_SMOL" --seed 4004 $(resume ${P}screen_smol)
step ${P}screen_qwen $EQ evaluate ${P}screen_qwen "$QWEN" ruler "$QLEN" --samples "$SAMPLES_QWEN" --seed 4004 $(resume ${P}screen_qwen)
if [ -f "$RUNS/${P}screen_smol/metrics.json" ] && [ -f "$RUNS/${P}screen_qwen/metrics.json" ]; then
  python3 benchmarks/select_robust.py "$RUNS/${P}screen_smol" "$RUNS/${P}screen_qwen" --against "$UNIFORM" --budgets "$BUDGETS" | tee "$RUNS/${P}selection.txt"
  WINNER=$(sed -n 's/^recommended: //p' "$RUNS/${P}selection.txt")
  METHODS=$(printf '%s\n' "$WINNER" "$ROBUST" "$UNIFORM" | awk '!seen[$0]++' | paste -sd, -)
  export METHODS
  step ${P}confirm_smol $CS evaluate ${P}confirm_smol "$SMOL" ruler 4096 --samples "$CONFIRM_SMOL" --seed 5005 $(resume ${P}confirm_smol)
  step ${P}confirm_qwen $CQ evaluate ${P}confirm_qwen "$QWEN" ruler "$QLEN" --samples "$CONFIRM_QWEN" --seed 5005 $(resume ${P}confirm_qwen)
  step ${P}niah_qwen $EN evaluate ${P}confirm_niah_qwen "$QWEN" niah "$NIAH_LENGTHS" $(resume ${P}confirm_niah_qwen)
fi
if [ "${SCREEN:-allocation}" = preference ] && [ "${DRY:-0}" != 1 ] && [ ! -f "$RUNS/${P}prefill_time.json" ]; then
  step ${P}prefill_time 150 python3 -m dynamickv.cli bench --config llama-3.1-8b --budget 1024 --lengths 32768,131072 \
    --methods "fullkv,snapkv,snapkv-forward,snapkv-decay,dynamickv:$D;allocation=preference" --steps 16 \
    --device cuda --out "$RUNS/${P}prefill_time.json"
fi
tar -czf "$OUT/screen.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

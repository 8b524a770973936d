#!/usr/bin/env bash
# The recommended method against kvpress 0.5.5 in the same run, on the seed-2002 RULER sets of
# docs/evaluation.md (both real models, the papers' raw protocol), with today's and the previous
# recommendation, the paper's DynamicKV and SnapKV beside it. kvpress answers at B = 128 with its
# default SnapKV and with the press that scored best there in the first run (PyramidKV, window 8).
#
# Carried beforehand as benchmarks/gpu_quality.sh describes (pieces, wheels incl. .whl/kv, the
# seed-2002 RULER cache files). OUT=... bash benchmarks/gpu_recommended_peer.sh; a second call on the
# same machine resumes every step. Results: $OUT/recommended.tar.gz.
source "$(dirname "$0")/gpu_common.sh"
BUDGETS=64,128,256
METHODS="snapkv-decay,snapkv-forward,dynamickv-robust,dynamickv,snapkv"
PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
SAMPLES_SMOL=8 SAMPLES_QWEN=6
if [ "${DRY:-0}" = 1 ]; then QWEN=$SMOL QLEN=4096 SAMPLES_SMOL=1 SAMPLES_QWEN=1 BUDGETS=128; fi
export METHODS BUDGETS PRESSES
step rec_qwen 120 evaluate rec_qwen "$QWEN" ruler "$QLEN" --samples "$SAMPLES_QWEN" --seed 2002 $(resume rec_qwen)
step rec_smol 100 evaluate rec_smol "$SMOL" ruler 4096 --samples "$SAMPLES_SMOL" --seed 2002 $(resume rec_smol)
BUDGETS=128
export BUDGETS
step peer_qwen 120 peer rec_qwen "$QWEN"
step peer_smol 100 peer rec_smol "$SMOL"
tar -czf "$OUT/recommended.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

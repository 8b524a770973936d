#!/usr/bin/env bash
# Does the layer-adaptive result hold on a model no choice has seen? Qwen2.5-Coder-1.5B-Instruct (28
# layers, 12 query / 2 KV heads) on RULER 8k and NIAH to 8k, raw protocol, with kvpress 0.5.5 at B = 128
# on the same prompts. No method or setting was chosen on this model.
#
# Beforehand, calls that leave on the (warm) machine (as for benchmarks/gpu_quality.sh):
#   /tmp/pieces/qwen2.5-coder-1.5b/part*   its GGUF (1.1 GB) in 19 pieces of ~59 MB, one per call
#   /tmp/carry/.whl/{ours,kv}, /tmp/carry/ruler/, /tmp/carry/rulerwheels/
# Then:  OUT=... bash benchmarks/gpu_third_model.sh   (call it again on the same machine to resume)
# The whole run took about 19 minutes of one H200 (2026-11-30; step estimates are its times); the
# results are in docs/results/quality/q15_1130/ and docs/evaluation.md (eighth session).
source "$(dirname "$0")/gpu_common.sh"
Q15=qwen2.5-coder-1.5b
BUDGETS=64,128,256
METHODS="${Q15_METHODS:-snapkv-decay,dynamickv-preference,snapkv,pyramidkv,dynamickv,cake}"
if [ "${DRY:-0}" = 1 ]; then Q15=smollm2-135m QLEN=4096 METHODS=snapkv-decay,dynamickv-preference BUDGETS=128; fi
export METHODS BUDGETS
step q15_ruler 420 evaluate q15_ruler "$Q15" ruler "$QLEN" --samples 6 --seed 2002 $(resume q15_ruler)
BUDGETS=128 PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
export BUDGETS PRESSES
step q15_peer 150 peer q15_ruler "$Q15"
# what each method's token selection costs on the GPU (no model: a Llama-3.1-8B shape, random tensors)
step sel_cost 90 python3 benchmarks/selection_cost.py --device "$DEVICE" --repeats 3 \
  --lengths "$( [ "${DRY:-0}" = 1 ] && echo 2048 || echo 8192,32768,131072)" --out "$RUNS/selection_cost_h200.json" \
  --methods "snapkv-decay,dynamickv-preference,cake,cake:update_every=4,cake:update_every=32,snapkv:window=32;pooling=avg;kernel=5"
BUDGETS=64,128,256 METHODS="snapkv-decay,dynamickv-preference,snapkv,dynamickv"
export METHODS BUDGETS
step q15_niah 120 evaluate q15_niah "$Q15" niah "$( [ "${DRY:-0}" = 1 ] && echo 1024 || echo 1024,2048,4096,8192)" $(resume q15_niah)
# a set no choice has seen (seed 7007), kvpress at B = 128 on the same prompts
METHODS="snapkv-decay,dynamickv-preference,snapkv,dynamickv"
export METHODS
step q15_fresh 170 evaluate q15_fresh "$Q15" ruler "$QLEN" --samples 8 --seed 7007 $(resume q15_fresh)
BUDGETS=128 PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
export BUDGETS PRESSES
step q15_fresh_peer 190 peer q15_fresh "$Q15"
# the rest of the catalog and two allocation ablations (the recommended scoring held fixed)
BUDGETS=64,128,256
METHODS="dynamickv:pooling=decay;kernel=12;quiet_sinks=4,dynamickv-preference:min_tokens=0,snapkv-forward,windowkv,adakv,h2o,streamingllm"
export METHODS BUDGETS
step q15_ruler_more 170 evaluate q15_ruler_more "$Q15" ruler "$QLEN" --samples 6 --seed 2002 $(resume q15_ruler_more)
# 16k: 16 ranks of this model run out of the H200's memory there, 8 do not
METHODS="snapkv-decay,dynamickv-preference,snapkv"
export METHODS
pip_target /tmp/site "$CARRY"/rulerwheels/*.whl  # these samples are generated here
NPROC=$([ "${DRY:-0}" = 1 ] && echo 1 || echo 8) step q15_ruler16k 130 evaluate q15_ruler16k "$Q15" ruler "$( [ "${DRY:-0}" = 1 ] && echo 4096 || echo 16384)" \
  --samples 4 --seed 2002 $(resume q15_ruler16k)
tar -czf "$OUT/quality.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

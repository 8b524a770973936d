#!/usr/bin/env bash
# The quality measurements of docs/evaluation.md in one call on the GPU machine (no package index, no
# model hub): dynamickv's grid on RULER and NIAH with both embedded real models, kvpress 0.5.5 as a peer on
# the same prompts (its own process), the attention-mass study, and a batched-vs-single decoding check.
#
# Beforehand, calls that leave on the (warm) machine:
#   /tmp/pieces/<model>/part*   the GGUF of each model, split (benchmarks/gpu_pieces.sh says how)
#   /tmp/carry/.whl/{ours,kv}   wheels: ours = gguf, needlehaystack; kv = kvpress 0.5.5, transformers
#                               5.2.0, tokenizers 0.22.2, cachetools 5.5.2
#   /tmp/carry/ruler/           the RULER samples, generated here (dynamickv's cache files)
#   /tmp/carry/rulerwheels/     RULER's generators, in case a cache file does not match
# Then:  OUT=... bash benchmarks/gpu_quality.sh        (steps run in priority order; a step that would not
# finish before DEADLINE seconds is skipped and listed; everything lands in $OUT/quality.tar.gz)
# The whole grid takes about 40 minutes of one H200 (step estimates below are the 2026-11-30 run's
# times): call it again on the same machine and every evaluate step resumes where it stopped.
source "$(dirname "$0")/gpu_common.sh"
BUDGETS=64,128,256
# every method of the catalog, WindowKV's two fixed modes, and the allocation rules with the
# recommended scoring held fixed (DynamicKV's shares, CAKE's shares without a floor), so that a row
# differs from `snapkv-decay` by its allocation alone
D="pooling=decay;kernel=12;quiet_sinks=4"
METHODS="streamingllm,h2o,snapkv,pyramidkv,windowkv,windowkv:mode=localization,windowkv:mode=aggregation,\
adakv,pyramidkv:heads=adaptive,dynamickv,dynamickv:allocation=candidates,snapkv-forward,snapkv-decay,\
dynamickv-robust,dynamickv-preference,dynamickv:$D,dynamickv-preference:min_tokens=0,cake"
PRESSES="kvpress-snapkv,kvpress-snapkv:w32k7,kvpress-pyramidkv:w8k7,kvpress-streamingllm,kvpress-adakv"
if [ "${DRY:-0}" = 1 ]; then
  QWEN=$SMOL QLEN=4096 METHODS="snapkv,adakv,dynamickv,snapkv-decay,dynamickv-preference" BUDGETS=128
  PRESSES="kvpress-snapkv,kvpress-adakv"
fi

export METHODS BUDGETS PRESSES
if [ "${DRY:-0}" = 1 ]; then export ATTN_TASKS=niah_single_2; fi
step final_smol 280 evaluate final_smol "$SMOL" ruler 4096 --samples 8 --seed 2002 $(resume final_smol)
step final_qwen 290 evaluate final_qwen "$QWEN" ruler "$QLEN" --samples 6 --seed 2002 $(resume final_qwen)
step niah_qwen 90 evaluate niah_qwen "$QWEN" niah "$( [ "${DRY:-0}" = 1 ] && echo 1024 || echo 1024,2048,4096,8192)" $(resume niah_qwen)
step peer_smol 420 peer final_smol "$SMOL"
step peer_qwen 420 peer final_qwen "$QWEN"
# a set no choice has seen (seed 7007): the recommended method, the best layer-adaptive one and the
# papers' two, with kvpress's default and best press at B = 128 on the same prompts
METHODS="${FRESH_METHODS:-snapkv-decay,dynamickv-preference,cake,snapkv,dynamickv}"
[ "${DRY:-0}" = 1 ] && METHODS=snapkv-decay,dynamickv-preference,cake
step fresh_smol 230 evaluate fresh_smol "$SMOL" ruler 4096 --samples "${FRESH_SMOL:-16}" --seed 7007 $(resume fresh_smol)
step fresh_qwen 140 evaluate fresh_qwen "$QWEN" ruler "$QLEN" --samples "${FRESH_QWEN:-8}" --seed 7007 $(resume fresh_qwen)
BUDGETS=128 PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
step fresh_peer_smol 110 peer fresh_smol "$SMOL"
step fresh_peer_qwen 120 peer fresh_qwen "$QWEN"
BUDGETS=64,128,256
step dev_smol 50 evaluate dev_smol "$SMOL" ruler 4096 --samples 3 --seed 1001 $(resume dev_smol)
step dev_qwen 60 evaluate dev_qwen "$QWEN" ruler "$QLEN" --samples 3 --seed 1001 $(resume dev_qwen)
step attn_smol 30 attention attn_smol "$SMOL" 4096
step attn_qwen 40 attention attn_qwen "$QWEN" "$QLEN"
METHODS="snapkv,dynamickv,dynamickv:pooling=forward;kernel=12;min_ratio=0.5"
step agree_smol 40 evaluate agree_smol "$SMOL" ruler 4096 --samples 8 --seed 2002 \
  --tasks niah_single_1,niah_multikey_1,qa_1,vt --no-batch-decode $(resume agree_smol)
tar -czf "$OUT/quality.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

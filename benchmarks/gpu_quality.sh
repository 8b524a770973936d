#!/usr/bin/env bash
# The quality measurements of docs/evaluation.md in one call on the GPU machine (no package index, no
# model hub): dynamickv's grid on RULER and NIAH with both embedded real models, kvpress 0.5.5 as a peer on
# the same prompts (its own process), the attention-mass study, and a batched-vs-single decoding check.
#
# Beforehand, calls that leave on the (warm) machine:
#   /tmp/pieces/<model>/part*   the GGUF of each model, split (benchmarks/gpu_upload.md lists the calls)
#   /tmp/carry/.whl/{ours,kv}   wheels: ours = gguf, needlehaystack; kv = kvpress 0.5.5, transformers
#                               5.2.0, tokenizers 0.22.2, cachetools 5.5.2
#   /tmp/carry/ruler/           the RULER samples, generated here (dynamickv's cache files)
#   /tmp/carry/rulerwheels/     RULER's generators, in case a cache file does not match
# Then:  OUT=... bash benchmarks/gpu_quality.sh        (steps run in priority order; a step that would not
# finish before DEADLINE seconds is skipped and listed; everything lands in $OUT/quality.tar.gz)
source "$(dirname "$0")/gpu_common.sh"
BUDGETS=64,128,256
METHODS="streamingllm,h2o,snapkv,pyramidkv,windowkv,windowkv:mode=localization,windowkv:mode=aggregation,\
dynamickv,dynamickv:allocation=candidates,adakv,pyramidkv:heads=adaptive,dynamickv:heads=adaptive,\
dynamickv:min_ratio=0.5,dynamickv:normalize=sum;sink=4,dynamickv:pooling=auto,dynamickv:pooling=forward;kernel=12,\
dynamickv:pooling=forward;kernel=12;min_ratio=0.5,dynamickv:pooling=forward;kernel=12;min_ratio=0.25,\
dynamickv:pooling=forward;kernel=12;min_ratio=0.5;normalize=sum;sink=4,dynamickv:pooling=forward;kernel=16;min_ratio=0.5,\
dynamickv:allocation=candidates;pooling=forward;kernel=12;min_ratio=0.5,\
dynamickv:pooling=forward;kernel=12;min_ratio=0.5;heads=adaptive,\
snapkv:window=8;pooling=forward;kernel=12,pyramidkv:pooling=forward;kernel=12"
PRESSES="kvpress-snapkv,kvpress-snapkv:w32k7,kvpress-pyramidkv:w8k7,kvpress-streamingllm,kvpress-adakv"
if [ "${DRY:-0}" = 1 ]; then
  QWEN=$SMOL QLEN=4096 METHODS="snapkv,adakv,dynamickv,dynamickv:pooling=forward;kernel=12;min_ratio=0.5" BUDGETS=128
  PRESSES="kvpress-snapkv,kvpress-adakv"
fi

export METHODS BUDGETS PRESSES
if [ "${DRY:-0}" = 1 ]; then export ATTN_TASKS=niah_single_2; fi
step final_smol 90 evaluate final_smol "$SMOL" ruler 4096 --samples 8 --seed 2002
step final_qwen 120 evaluate final_qwen "$QWEN" ruler "$QLEN" --samples 6 --seed 2002
step peer_smol 100 peer final_smol "$SMOL"
step peer_qwen 100 peer final_qwen "$QWEN"
step dev_smol 50 evaluate dev_smol "$SMOL" ruler 4096 --samples 3 --seed 1001
step dev_qwen 60 evaluate dev_qwen "$QWEN" ruler "$QLEN" --samples 3 --seed 1001
step niah_qwen 60 evaluate niah_qwen "$QWEN" niah "$( [ "${DRY:-0}" = 1 ] && echo 1024 || echo 1024,2048,4096,8192)"
step attn_smol 30 attention attn_smol "$SMOL" 4096
step attn_qwen 40 attention attn_qwen "$QWEN" "$QLEN"
METHODS="snapkv,dynamickv,dynamickv:pooling=forward;kernel=12;min_ratio=0.5"
step agree_smol 40 evaluate agree_smol "$SMOL" ruler 4096 --samples 8 --seed 2002 \
  --tasks niah_single_1,niah_multikey_1,qa_1,vt --no-batch-decode
tar -czf "$OUT/quality.tar.gz" -C "$RUNS" .
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

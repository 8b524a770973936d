#!/usr/bin/env bash
# benchmarks/kvpress_kept.py on the GPU machine: kvpress 0.5.5's kept positions and ours at matched
# settings, float32, for $MODEL on the prompts in $PROMPTS (a quality_peer.py prepare file, made here).
# Carried beforehand as for benchmarks/gpu_peer_finish.sh: the model's GGUF pieces, $CARRY/.whl/{ours,kv}
# and, for Gemma 3, $CARRY/tokenizers/<model>. Then:
#   OUT=... CARRY=... MODEL=gemma-3-270m PROMPTS=... bash benchmarks/gpu_kvpress_kept.sh
source "$(dirname "$0")/gpu_common.sh"
: "${MODEL:?}" "${PROMPTS:?}"
kept() {
  PYTHONPATH=/tmp/kvsite python3 benchmarks/kvpress_kept.py kvpress --model-dir "$DYNAMICKV_CACHE/models/$MODEL" \
    --prompts "$PROMPTS" --budgets 64,128,256 --device "$DEVICE" --out "$OUT/kvpress_kept.jsonl" &&
    python3 benchmarks/kvpress_kept.py compare --model "$MODEL" --prompts "$PROMPTS" \
      --kvpress "$OUT/kvpress_kept.jsonl" --device "$DEVICE" --out "$OUT/kept_compare.json"
}
export -f kept
export MODEL PROMPTS OUT
step kvpress_kept 60 kept
echo "done in $(($(date +%s) - START)) s"

#!/usr/bin/env bash
# kvpress 0.5.5 again on the prompts of the committed quality runs, now at the matched ratio
# (`matched_ratio` in kvpress_quality_peer.py: kvpress keeps exactly B). The committed kvpress rows
# were made with `1 - B / n`, with which kvpress kept B - 1 tokens in most prompts. Our rows are not
# re-run: the runs are docs/results/quality/grid_1130/{final,fresh}_{smol,qwen} (SmolLM2-135M RULER
# 4k, Qwen2.5-Coder-0.5B RULER 8k; seeds 2002 and 7007), gemma_full_1130/gemma_ruler and
# q15_1130/q15_{ruler,fresh} (Qwen2.5-Coder-1.5B RULER 8k, seeds 2002 and 7007). A set whose prompts
# or model were not carried is skipped.
#
# Priority order: B = 128 (the issue's comparison) with kvpress's best press (PyramidKV, window 8)
# and its default SnapKV on the SmolLM2 and Qwen sets ($SETS), then Gemma at B = 128, then B = 64
# and 256 on those sets and on Gemma. A step an earlier call finished is skipped, and one it cut short resumes
# (kvpress_quality_peer.py skips the records its shard file holds), so further calls on the same
# machine carry on.
#
# Prepared here (CPU), carried beforehand, one piece a call (benchmarks/gpu_pieces.sh):
#   /tmp/pieces/<model>/part*          the GGUF files (SmolLM2 3 pieces, Qwen 9, Gemma 5, Qwen-1.5B 19)
#   $CARRY/.whl/ours, $CARRY/.whl/kv   gguf; kvpress 0.5.5, transformers 5.2.0, tokenizers 0.22.2,
#                                      cachetools
#   $CARRY/prompts/<run>.jsonl.gz      `quality_peer.py prepare --run <committed run>`: the runs'
#                                      token ids, so no RULER files or generators need to travel
#   $CARRY/tokenizers/gemma-3-270m/    as in gpu_gemma.sh
# Then:  OUT=... CARRY=... bash benchmarks/gpu_matched_peer.sh
# Results: $OUT/matched_peer.tar.gz; scored here with
#   python benchmarks/quality_peer.py score --run <committed run> --peer <run>/peer.*.jsonl --out <folder>
source "$(dirname "$0")/gpu_common.sh"
GEMMA=gemma-3-270m Q15=qwen2.5-coder-1.5b
declare -A MODEL=([final_smol]=$SMOL [fresh_smol]=$SMOL [final_qwen]=$QWEN [fresh_qwen]=$QWEN [gemma_ruler]=$GEMMA
  [q15_ruler]=$Q15 [q15_fresh]=$Q15)
SETS="final_qwen final_smol fresh_qwen fresh_smol q15_ruler q15_fresh"
for run in "${!MODEL[@]}"; do
  mkdir -p "$RUNS/$run"
  if [ ! -f "$RUNS/$run/peer_prompts.jsonl" ] && [ -f "$CARRY/prompts/$run.jsonl.gz" ]; then
    gunzip -c "$CARRY/prompts/$run.jsonl.gz" >"$RUNS/$run/peer_prompts.jsonl"
  fi
done
if [ "${DRY:-0}" = 1 ]; then # one prompt of each set, on whichever models were imported
  for run in "${!MODEL[@]}"; do
    [ -f "$RUNS/$run/peer_prompts.jsonl" ] && sed -i -n 1p "$RUNS/$run/peer_prompts.jsonl"
  done
fi
have() { [ -f "$RUNS/$1/peer_prompts.jsonl" ] && [ -d "$DYNAMICKV_CACHE/models/${MODEL[$1]}" ]; }
export PRESSES="kvpress-pyramidkv:w8k7,kvpress-snapkv" BUDGETS=128
for run in $SETS; do have "$run" && step "${run}_128" 110 peer_shards "$run" "${MODEL[$run]}"; done
have gemma_ruler && step gemma_128 250 peer_shards gemma_ruler "$GEMMA"
export BUDGETS=64,128,256
for run in $SETS; do have "$run" && step "${run}_all" 150 peer_shards "$run" "${MODEL[$run]}"; done
have gemma_ruler && step gemma_all 300 peer_shards gemma_ruler "$GEMMA"
tar -czf "$OUT/matched_peer.tar.gz" -C "$RUNS" steps.txt $(cd "$RUNS" && ls ./*/peer.*.jsonl 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

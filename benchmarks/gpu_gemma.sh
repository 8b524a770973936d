#!/usr/bin/env bash
# A family no choice of ours has seen: Gemma-3-270M (base, gemma3_text, 18 layers of which 3 are
# full-attention; the 15 sliding-window layers keep their own 512-token window and are not compressed).
# RULER 4k (13 tasks x 16 samples, seed 7007) and NIAH (1k-8k, depths 10/40/60/90), every method of the
# grid at B = 64, 128, 256 plus FullKV, then kvpress 0.5.5 on the same token ids at B = 128. Then the
# Qwen2.5-Coder-0.5B NIAH set at the depths no earlier run used, for issue 12's NIAH target.
#
# Carried beforehand (benchmarks/gpu_pieces.sh describes the upload):
#   /tmp/pieces/gemma-3-270m/part*, /tmp/pieces/qwen2.5-coder-0.5b/part*   the GGUF files, one piece a call
#   $CARRY/.whl/ours, $CARRY/.whl/kv   gguf; kvpress 0.5.5, transformers 5.2.0, tokenizers 0.22.2, cachetools
#   $CARRY/ruler/                      the RULER cache files of the Gemma set, generated here (CPU) first
#   $CARRY/rulerwheels/                RULER's generators: the cache key names their release
#   $CARRY/tokenizers/gemma-3-270m/    tokenizer.json and tokenizer_config.json as transformers 5.24
#                                      converted them here: 5.17 reads Gemma 3's GGUF tokenizer back as
#                                      single characters, and its conversion now refuses it
# Then:  OUT=... CARRY=... bash benchmarks/gpu_gemma.sh   (a second call on the same machine resumes)
# Results: $OUT/gemma.tar.gz; a RULER run cut short is scored with benchmarks/complete_samples.py.
# 2026-11-30 (H200, 16 processes): Gemma decodes each configuration alone (its sliding layers stay out
# of the batched decoder), so the RULER step made 2,528 of its 4,576 predictions in 570 + 435 s, the
# 7 needle tasks whole; the Qwen NIAH step took 57 s; the NIAH and kvpress steps for Gemma did not run
# with the right tokenizer. docs/results/quality/gemma_1130/ holds what was measured.
source "$(dirname "$0")/gpu_common.sh"
GEMMA=gemma-3-270m
METHODS="snapkv-decay,dynamickv-preference,snapkv,dynamickv,pyramidkv,windowkv,streamingllm" BUDGETS=64,128,256
export METHODS BUDGETS
step gemma_ruler 240 evaluate gemma_ruler "$GEMMA" ruler 4096 --samples 16 --seed 7007 $(resume gemma_ruler)
step gemma_niah 90 evaluate gemma_niah "$GEMMA" niah 1024,2048,4096,8192 --depths 10,40,60,90 $(resume gemma_niah)
METHODS="dynamickv-auto,snapkv-decay,snapkv,dynamickv"
export METHODS
step qwen_niah 90 evaluate qwen_niah "$QWEN" niah 1024,2048,4096,6144,8192 --depths 10,40,60,90 $(resume qwen_niah)
BUDGETS=128 PRESSES="kvpress-snapkv,kvpress-pyramidkv:w8k7"
export BUDGETS PRESSES
step gemma_peer 150 peer gemma_ruler "$GEMMA"
tar -czf "$OUT/gemma.tar.gz" -C "$RUNS" steps.txt $(cd "$RUNS" && ls -d gemma_* qwen_niah 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

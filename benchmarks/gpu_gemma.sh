#!/usr/bin/env bash
# A family no choice of ours has seen: Gemma-3-270M (base, gemma3_text, 18 layers of which 3 are
# full-attention; the 15 sliding-window layers keep their own 512-token window and are not compressed).
# RULER 4k (13 tasks x 16 samples, seed 7007) and NIAH (1k-8k, depths 10/40/60/90), every method of the
# grid at B = 64, 128, 256 plus FullKV, then kvpress 0.5.5 on the same token ids at the same budgets
# (the presses of gpu_quality.sh, at kvpress's defaults and at ours).
#
# Carried beforehand (benchmarks/gpu_pieces.sh describes the upload):
#   /tmp/pieces/gemma-3-270m/part*     the GGUF file, one piece a call
#   $CARRY/.whl/ours, $CARRY/.whl/kv   gguf, needlehaystack; kvpress 0.5.5, transformers 5.2.0,
#                                      tokenizers 0.22.2, cachetools
#   $CARRY/ruler/                      the RULER cache files of the Gemma set, generated here (CPU) first
#   $CARRY/rulerwheels/                RULER's generators: the cache key names their release
#   $CARRY/tokenizers/gemma-3-270m/    tokenizer.json and tokenizer_config.json as transformers 5.24
#                                      converted them here: 5.17 reads Gemma 3's GGUF tokenizer back as
#                                      single characters, and its conversion now refuses it
# Then:  OUT=... CARRY=... bash benchmarks/gpu_gemma.sh   (a second call on the same machine resumes)
# Results: $OUT/gemma.tar.gz; a RULER run cut short is scored with benchmarks/complete_samples.py.
# History: the first run (2026-11-30, eleventh session) decoded each configuration alone, since the
# batched decoder did not hold Gemma's sliding layers, and made 2,528 of 4,576 RULER predictions in
# 1,005 s (docs/results/quality/gemma_1130/). The batched decoder now holds them.
source "$(dirname "$0")/gpu_common.sh"
GEMMA=gemma-3-270m
METHODS="dynamickv-auto,snapkv-decay,dynamickv-preference,snapkv,dynamickv,pyramidkv,windowkv,streamingllm,adakv" BUDGETS=64,128,256
export METHODS BUDGETS
step gemma_ruler 240 evaluate gemma_ruler "$GEMMA" ruler 4096 --samples 16 --seed 7007 $(resume gemma_ruler)
step gemma_niah 90 evaluate gemma_niah "$GEMMA" niah 1024,2048,4096,8192 --depths 10,40,60,90 $(resume gemma_niah)
PRESSES="kvpress-snapkv,kvpress-snapkv:w32k7,kvpress-pyramidkv:w8k7,kvpress-streamingllm,kvpress-adakv"
export PRESSES
step gemma_peer 150 peer gemma_ruler "$GEMMA"
tar -czf "$OUT/gemma.tar.gz" -C "$RUNS" steps.txt $(cd "$RUNS" && ls -d gemma_* 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

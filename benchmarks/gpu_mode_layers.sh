#!/usr/bin/env bash
# benchmarks/windowkv_mode_layers.py on the GPU machine, which has no package index and no benchmark data.
#
# Here, first (the prompts of both models, token ids per protocol, about 19 MB):
#   python benchmarks/windowkv_mode_layers.py --models smollm2-135m:4096,qwen2.5-coder-0.5b:8192 \
#       --ruler-samples 4 --seeds 1,2 --longbench-dir ../shared/data/longbench --multi-news 15 \
#       --save-prompts .dev/wprompts
# Beforehand, calls that leave on the (warm) machine /tmp/pieces/<model>/part*: each model's GGUF, split
# (as for benchmarks/gpu_quality.sh). Then, carrying .whl (the gguf wheel in .whl/ours) and .dev/wprompts:
#   OUT=... bash benchmarks/gpu_mode_layers.sh
# About 5 minutes on one H200, most of it importing the two GGUF files. The analysis is left to
# `--report` (about 40 s on two CPU cores; on the GPU machine it ran past the call's limit once).
# A third model, measured later (2026-11-30: its prompts saved with --save-prompts .dev/wprompts15, its
# GGUF in 19 calls; 68 s of prefill, 3.5 minutes in all), joins the same analysis:
#   MODELS=qwen2.5-coder-1.5b:8192 PROMPTS=.dev/wprompts15 OUT=... bash benchmarks/gpu_mode_layers.sh
#   python benchmarks/windowkv_mode_layers.py --report MAIN.json,THIRD.json --echo MAIN_echo.json,THIRD_echo.json
set -euo pipefail
: "${OUT:?}" "${PROMPTS:=.dev/wprompts}" "${DEVICE:=cuda}" "${DTYPE:=bfloat16}"
: "${MODELS:=smollm2-135m:4096,qwen2.5-coder-0.5b:8192}" "${PROTOCOLS:=raw,chat,agnostic}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu_pieces.sh"
setup_models
run() { python3 benchmarks/windowkv_mode_layers.py --models "$MODELS" --prompts "$PROMPTS" --device "$DEVICE" --dtype "$DTYPE" "$@"; }
# the measurement, then the echo control (the QA prompts without their restated instruction); the
# analysis runs after, anywhere: --report windowkv_mode_layers.json --echo windowkv_mode_layers_echo.json
run --protocols "$PROTOCOLS" --out "$OUT/windowkv_mode_layers.json" --no-analysis
run --protocols "${ECHO_PROTOCOLS:-raw,chat}" --echo-control --out "$OUT/windowkv_mode_layers_echo.json"

#!/usr/bin/env bash
# benchmarks/windowkv_surprisal.py on the GPU machine (no package index, no benchmark data).
#
# The prompts are those of benchmarks/gpu_mode_layers.sh (`windowkv_mode_layers.py --save-prompts
# .dev/wprompts`, here). Beforehand, calls that leave each model's GGUF pieces in /tmp/pieces/<model>/
# (benchmarks/gpu_pieces.sh says how). Then, carrying .whl (the gguf wheel in .whl/ours) and the prompts:
#   OUT=... bash benchmarks/gpu_surprisal.sh
set -euo pipefail
: "${OUT:?}" "${PROMPTS:=.dev/wprompts}" "${DEVICE:=cuda}" "${DTYPE:=bfloat16}"
: "${MODELS:=smollm2-135m,qwen2.5-coder-0.5b}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu_pieces.sh"
setup_models
python3 benchmarks/windowkv_surprisal.py --models "$MODELS" --prompts "$PROMPTS" --device "$DEVICE" \
  --dtype "$DTYPE" --out "$OUT/windowkv_surprisal.json" | grep -v " s$"

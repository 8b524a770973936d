#!/usr/bin/env bash
# Quality on the GPU machine (no package index, no model hub): dynamickv's grid and kvpress 0.5.5 as a peer
# on the same prompts, same protocol, same scorer, in one call.
#
# Beforehand (one call per piece, back to back, so the machine stays warm and keeps /tmp):
#   each call copies a GGUF piece to /tmp/pieces/<model>/ (see benchmarks/gpu_upload.sh)
# Then, with the wheels carried in .whl/ (ours: gguf, needlehaystack; kv: kvpress 0.5.5, transformers 5.2.0,
# tokenizers 0.22.2, cachetools 5.5.2) and an optional RULER cache in .ruler/:
#   JOBS="smollm2-135m:ruler:4096 qwen2.5-coder-0.5b:ruler:8192 qwen2.5-coder-0.5b:niah:1024,2048,4096,8192" \
#   METHODS=... BUDGETS=64,128,256 SAMPLES=8 SEED=1001 NPROC=12 bash benchmarks/gpu_quality.sh
# Writes $OUT/quality.tar.gz (every run folder: config, predictions, metrics, summary, peer files) and
# prints each run's summary and comparison tables last.
set -uo pipefail
: "${OUT:?}" "${JOBS:?model:benchmark:lengths ...}" "${METHODS:?}" "${BUDGETS:=64,128,256}"
: "${SAMPLES:=8}" "${SEED:=1001}" "${NPROC:=12}" "${PROTOCOL:=raw}" "${PEER:=1}" "${PEER_PRESSES:=}"
: "${MAX_NEW:=64}" "${DEADLINE:=540}"
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ours/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kvsite .whl/kv/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export DYNAMICKV_CACHE=/tmp/dkv
mkdir -p "$DYNAMICKV_CACHE" /tmp/runs
if [ -d .ruler ]; then mkdir -p "$DYNAMICKV_CACHE/ruler" && cp -rn .ruler/. "$DYNAMICKV_CACHE/ruler/"; fi
for dir in /tmp/pieces/*/; do
  name=$(basename "$dir")
  if [ ! -f "$DYNAMICKV_CACHE/models/$name/model.safetensors" ]; then
    cat "$dir"part* > "/tmp/$name.gguf"
    python3 -c "import sys; from dynamickv.models import import_gguf; print(import_gguf(sys.argv[1], sys.argv[2]))" \
      "$name" "/tmp/$name.gguf" || echo "import of $name failed"
  fi
done
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
for job in $JOBS; do
  IFS=: read -r model bench lengths <<<"$job"
  run="/tmp/runs/${model}_${bench}"
  echo "== $job ($(left) s left)"
  extra=()
  if [ "$bench" = ruler ]; then extra=(--samples "$SAMPLES" --seed "$SEED"); fi
  timeout "$(left)" torchrun --standalone --nproc-per-node "$NPROC" -m dynamickv.cli eval "$bench" \
    --model "$model" --methods "$METHODS" --budgets "$BUDGETS" --lengths "$lengths" --protocol "$PROTOCOL" \
    --max-new-tokens "$MAX_NEW" --device cuda --dtype bfloat16 --no-progress --out "$run" "${extra[@]}" \
    $( [ -d "$run" ] && echo --resume ) 2>&1 | grep -v "Warning\|warn(" | tail -40
  if [ "$PEER" = 1 ] && [ "$(left)" -gt 30 ]; then
    python3 benchmarks/quality_peer.py prepare --run "$run" --out "$run/peer_prompts.jsonl"
    pids=()
    for ((i = 0; i < NPROC; i++)); do
      PYTHONPATH=/tmp/kvsite timeout "$(left)" python3 benchmarks/kvpress_quality_peer.py \
        --model-dir "$DYNAMICKV_CACHE/models/$model" --prompts "$run/peer_prompts.jsonl" --budgets "$BUDGETS" \
        --presses "$PEER_PRESSES" --shard "$i/$NPROC" --out "$run/peer.$i.jsonl" 2>"$run/peer.$i.log" &
      pids+=($!)
    done
    wait "${pids[@]}"
    tail -3 "$run"/peer.0.log
    python3 benchmarks/quality_peer.py score --run "$run" --peer "$run"/peer.*.jsonl | tail -40
  fi
done
tar -czf "$OUT/quality.tar.gz" -C /tmp/runs .
echo "done in $(( $(date +%s) - START )) s"

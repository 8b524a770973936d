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
set -uo pipefail
: "${OUT:?}" "${DEADLINE:=570}" "${NPROC:=16}" "${CARRY:=/tmp/carry}" "${DEVICE:=cuda}" "${DTYPE:=bfloat16}"
# DRY=1: a smoke test of this script on a CPU (one task, one sample per set, one process)
if [ "${DRY:-0}" = 1 ]; then NPROC=1 DEVICE=cpu DTYPE=float32; fi
START=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - START))); }
RUNS=/tmp/runs
mkdir -p "$RUNS/logs"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
pip_target /tmp/site "$CARRY"/.whl/ours/*.whl "$CARRY"/rulerwheels/*.whl
pip_target /tmp/kvsite "$CARRY"/.whl/kv/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export DYNAMICKV_CACHE="${DYNAMICKV_CACHE:-/tmp/dkv}" HF_HUB_DISABLE_PROGRESS_BARS=1
mkdir -p "$DYNAMICKV_CACHE/ruler"
cp -n "$CARRY"/ruler/*.jsonl "$DYNAMICKV_CACHE/ruler/" 2>/dev/null
for dir in /tmp/pieces/*/; do
  [ -d "$dir" ] || continue
  name=$(basename "$dir")
  if [ ! -f "$DYNAMICKV_CACHE/models/$name/model.safetensors" ]; then
    cat "$dir"part* >"/tmp/$name.gguf"
    python3 -c "import sys; from dynamickv.models import import_gguf; print(import_gguf(sys.argv[1], sys.argv[2]))" \
      "$name" "/tmp/$name.gguf" 2>&1 | grep -v "Loading\|Converting\|it/s"
  fi
done
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
echo "setup done at $(($(date +%s) - START)) s"

SMOL=smollm2-135m QWEN=qwen2.5-coder-0.5b QLEN=8192
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

step() { # name, estimated seconds, command...
  local name=$1 est=$2
  shift 2
  if [ "$(left)" -lt "$est" ]; then
    echo "$name skipped ($(left) s left, needs ~$est)" | tee -a "$RUNS/steps.txt"
    return
  fi
  local t0
  t0=$(date +%s)
  timeout "$(left)" bash -c '"$@"' _ "$@" >"$RUNS/logs/$name.log" 2>&1
  echo "$name rc=$? $(($(date +%s) - t0)) s" | tee -a "$RUNS/steps.txt"
  grep -v "Loading weights\|it/s\]\|Warning\|warn(" "$RUNS/logs/$name.log" | tail -n 30
}
evaluate() { # out, model, benchmark, lengths, extra args...
  local out=$1 model=$2 bench=$3 lengths=$4
  shift 4
  if [ "${DRY:-0}" = 1 ] && [ "$bench" = ruler ]; then set -- "$@" --samples 1 --tasks niah_single_2,qa_1; fi
  torchrun --standalone --nproc-per-node "$NPROC" -m dynamickv.cli eval "$bench" --model "$model" \
    --methods "$METHODS" --budgets "$BUDGETS" --lengths "$lengths" --protocol raw --max-new-tokens 64 \
    --device "$DEVICE" --dtype "$DTYPE" --no-progress --out "$RUNS/$out" "$@"
}
peer() { # run folder, model
  local run=$RUNS/$1 model=$2 pids=()
  python3 benchmarks/quality_peer.py prepare --run "$run" --out "$run/peer_prompts.jsonl" || return 1
  for ((i = 0; i < NPROC; i++)); do
    PYTHONPATH=/tmp/kvsite python3 benchmarks/kvpress_quality_peer.py --model-dir "$DYNAMICKV_CACHE/models/$model" \
      --prompts "$run/peer_prompts.jsonl" --budgets "$BUDGETS" --presses "$PRESSES" --shard "$i/$NPROC" \
      --out "$run/peer.$i.jsonl" --device "$DEVICE" --dtype "$DTYPE" 2>"$run/peer.$i.log" &
    pids+=($!)
  done
  wait "${pids[@]}"
  python3 benchmarks/quality_peer.py score --run "$run" --peer "$run"/peer.*.jsonl
}
attention() { # out, model, length
  python3 -m dynamickv.cli analyze --study attention --benchmark ruler --model "$2" --lengths "$3" --samples 2 \
    --seed 2002 --budget 128 --device "$DEVICE" --dtype "$DTYPE" --out "$RUNS/$1" --tasks "${ATTN_TASKS:-}" \
    --methods "snapkv,pyramidkv,dynamickv,dynamickv:pooling=forward;kernel=12;min_ratio=0.5,snapkv:window=8;pooling=forward;kernel=12"
}

export -f evaluate peer attention
export METHODS BUDGETS PRESSES RUNS NPROC DEVICE DTYPE
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

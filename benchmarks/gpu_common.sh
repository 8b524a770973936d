# Shared by benchmarks/gpu_quality.sh and benchmarks/gpu_allocation_screen.sh (sourced, not run):
# installs the carried wheels, imports the carried GGUF pieces, and defines `step` (a command run
# only if it can finish before DEADLINE), `evaluate` (a sharded `dynamickv eval` of $METHODS x
# $BUDGETS, raw protocol), `peer` (kvpress on the same prompts) and `attention` (the attention study).
set -uo pipefail
: "${OUT:?}" "${DEADLINE:=570}" "${NPROC:=16}" "${CARRY:=/tmp/carry}" "${DEVICE:=cuda}" "${DTYPE:=bfloat16}"
# DRY=1: a smoke test of this script on a CPU (one task, one sample per set, one process)
if [ "${DRY:-0}" = 1 ]; then NPROC=1 DEVICE=cpu DTYPE=float32; fi
START=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - START))); }
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$RUNS/logs"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"; }
# a folder left out of the carry is skipped (RULER's generators are only needed when no cache file matches)
wheels() { compgen -G "$CARRY/$1/*.whl" || true; }
mapfile -t OURS < <(wheels .whl/ours; wheels rulerwheels)
if [ ${#OURS[@]} -gt 0 ]; then pip_target /tmp/site "${OURS[@]}"; fi
mapfile -t KV < <(wheels .whl/kv)
if [ ${#KV[@]} -gt 0 ]; then pip_target /tmp/kvsite "${KV[@]}"; fi
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export DYNAMICKV_CACHE="${DYNAMICKV_CACHE:-/tmp/dkv}" HF_HUB_DISABLE_PROGRESS_BARS=1
mkdir -p "$DYNAMICKV_CACHE/ruler"
cp -n "$CARRY"/ruler/*.jsonl "$DYNAMICKV_CACHE/ruler/" 2>/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/gpu_pieces.sh"
import_pieces 2>&1 | { grep -v "Loading\|Converting\|it/s" || true; }
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
echo "setup done at $(($(date +%s) - START)) s"

SMOL=smollm2-135m QWEN=qwen2.5-coder-0.5b QLEN=8192

step() { # name, estimated seconds, command...
  local name=$1 est=$2
  shift 2
  if grep -qx "$name rc=0 .*" "$RUNS/steps.txt" 2>/dev/null; then
    return # finished by an earlier call on this machine
  fi
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
  python3 benchmarks/quality_peer.py prepare --run "$RUNS/$1" --out "$RUNS/$1/peer_prompts.jsonl" || return 1
  peer_shards "$1" "$2" && python3 benchmarks/quality_peer.py score --run "$RUNS/$1" --peer "$RUNS/$1"/peer.*.jsonl
}
peer_shards() { # run folder (with peer_prompts.jsonl), model: kvpress over $NPROC processes; a shard
  # file already there is resumed (its records are skipped)
  local run=$RUNS/$1 model=$2 pids=()
  for ((i = 0; i < NPROC; i++)); do
    PYTHONPATH=/tmp/kvsite python3 benchmarks/kvpress_quality_peer.py --model-dir "$DYNAMICKV_CACHE/models/$model" \
      --prompts "$run/peer_prompts.jsonl" --budgets "$BUDGETS" --presses "$PRESSES" --shard "$i/$NPROC" \
      --out "$run/peer.$i.jsonl" --device "$DEVICE" --dtype "$DTYPE" 2>"$run/peer.$i.log" &
    pids+=($!)
  done
  wait "${pids[@]}"
}
attention() { # out, model, length
  python3 -m dynamickv.cli analyze --study attention --benchmark ruler --model "$2" --lengths "$3" --samples 2 \
    --seed 2002 --budget 128 --device "$DEVICE" --dtype "$DTYPE" --out "$RUNS/$1" --tasks "${ATTN_TASKS:-}" \
    --methods "snapkv,pyramidkv,dynamickv,dynamickv:pooling=forward;kernel=12;min_ratio=0.5,snapkv:window=8;pooling=forward;kernel=12"
}

resume() { [ -f "$RUNS/$1/config.json" ] && echo --resume; } # a step's --resume, once its run exists

export -f evaluate peer peer_shards attention
export RUNS NPROC DEVICE DTYPE

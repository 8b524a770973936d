#!/usr/bin/env bash
# Finish kvpress peer steps that a device window cut short, on a fresh machine. kvpress decodes each
# press and budget alone, so its step is the slowest of a run and the one a time limit stops.
#
# Made here (CPU) beforehand, one folder per run, carried as $CARRY/peer/<run>/:
#   peer_prompts.jsonl   python benchmarks/quality_peer.py prepare --run <run> --out ...
#                        (it checks the rebuilt samples against the run's fingerprint)
#   peer.<i>.jsonl       the records already made, split by shard (prompt index mod $NPROC), so
#                        each process resumes its own file; absent for a run not started
# plus the model's GGUF pieces (benchmarks/gpu_pieces.sh), $CARRY/.whl/{ours,kv} and, for Gemma 3,
# $CARRY/tokenizers/<model>. Then:
#   OUT=... CARRY=... MODEL=gemma-3-270m PEER_RUNS="gemma_ruler gemma_niah" \
#     PRESSES=... BUDGETS=64,128,256 bash benchmarks/gpu_peer_finish.sh
# Results: $OUT/peer.tar.gz, the shard files; score them here with
#   python benchmarks/quality_peer.py score --run <run> --peer <folder>/peer.*.jsonl
source "$(dirname "$0")/gpu_common.sh"
: "${MODEL:?}" "${PEER_RUNS:?}" "${PRESSES:?}" "${BUDGETS:?}"
export PRESSES BUDGETS
for run in $PEER_RUNS; do
  mkdir -p "$RUNS/$run"
  cp -n "$CARRY/peer/$run"/* "$RUNS/$run/"
  step "peer_$run" 60 peer_shards "$run" "$MODEL"
  echo "$run: $(cat "$RUNS/$run"/peer.*.jsonl | wc -l) records"
done
# shellcheck disable=SC2086
tar -czf "$OUT/peer.tar.gz" -C "$RUNS" steps.txt $(cd "$RUNS" && ls -d $PEER_RUNS)
echo "done in $(($(date +%s) - START)) s"
cat "$RUNS/steps.txt"

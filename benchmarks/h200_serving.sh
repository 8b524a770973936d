#!/usr/bin/env bash
# Issue 14's GPU measurements in one call on one H200 (about 8 minutes; parts over the time budget
# are skipped and recorded). Run from the repository root on the GPU machine:
#
#   KVSITE=/path/to/kvsite bash benchmarks/h200_serving.sh            # writes JSON under $OUT
#   bash benchmarks/h200_serving.sh --parts long_512k --budget-s 240   # a part on its own
#
# $KVSITE: a PYTHONPATH folder with kvpress 0.5.5, transformers 5.2.0, tokenizers 0.22.2, cachetools
# (kvpress runs in its own process). Outputs in $OUT (default ./h200_out): serving.json (every row),
# kvpress.jsonl, h200_summary.json and tables.md (both computed from serving.json by
# dynamickv.bench_tables, which regenerates them offline:
#   python -m dynamickv.bench_tables serving.json --summary h200_summary.json --md tables.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/h200_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/dynamickv_inductor}"
exec python3 benchmarks/h200_serving.py --out "$OUT" "$@"

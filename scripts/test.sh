#!/usr/bin/env bash
# The test command: install what the tests need, then run all of them (slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"

#!/usr/bin/env bash
# The acceptance gate: a benchmark run, `bench compare` against a committed baseline, then
# the dashboard over results/ (built even when the gate fails). Exit 1 on a regression.
#
# The run's settings must match the baseline's, or compare refuses them as incomparable:
#   BASELINE  run directory, summary.json or reference table (default results/baselines/smollm2-135m-cpu-k3)
#   RUN_ARGS  flags for `bench run`    (default: the CPU subset that baseline was made with)
#   RUN_DIR   where the run goes       (default results/runs/ci-<UTC time>)
#   GATE      gate YAML: tolerances, joint acceptance bounds (default
#             configs/gates/smollm2-135m-cpu-ci.yaml; GATE= for none)
#   PYTHON    interpreter with bench   (default .venv/bin/python, made by scripts/setup.sh)
# Step timings are printed as "[acceptance] <step>: <seconds> s"; with GITHUB_STEP_SUMMARY
# set, compare.md and dashboard.md are appended to the job summary.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BASELINE=${BASELINE:-results/baselines/smollm2-135m-cpu-k3}
RUN_ARGS=${RUN_ARGS:---config configs/smollm2-135m-cpu-ci.yaml --limit 16 --max-tokens 64 --reference configs/references/kimi-k2-thinking-eagle3.yaml}
RUN_DIR=${RUN_DIR:-results/runs/ci-$(date -u +%Y%m%d-%H%M%S)}
GATE=${GATE-configs/gates/smollm2-135m-cpu-ci.yaml}

t=$SECONDS
# shellcheck disable=SC2086  # RUN_ARGS is a list of flags
"$PY" -m bench run $RUN_ARGS --out "$RUN_DIR" --quiet
echo "[acceptance] benchmark: $((SECONDS - t)) s"

t=$SECONDS
gate_rc=0
"$PY" -m bench compare "$BASELINE" "$RUN_DIR" --out results/compare ${GATE:+--gate "$GATE"} || gate_rc=$?
echo "[acceptance] compare: $((SECONDS - t)) s (exit $gate_rc)"

t=$SECONDS
# A baseline run directory is drawn in the dashboard; a reference table is not a run.
dash_args=()
[ -d "$BASELINE" ] && dash_args=(--baseline "$BASELINE")
"$PY" -m bench dashboard results --out results/dashboard "${dash_args[@]}"
echo "[acceptance] dashboard: $((SECONDS - t)) s"

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  cat results/compare/compare.md results/dashboard/dashboard.md >> "$GITHUB_STEP_SUMMARY" || true
fi
exit "$gate_rc"

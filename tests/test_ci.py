"""The CI wiring: the acceptance script's run settings match the committed baseline, the
GitHub workflow has both jobs, and the trtllm-serve launcher follows the config."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from bench.cli import RUN_OVERRIDES, build_parser, main
from bench.config import REPO_ROOT, load_config
from bench.rundir import RunDir
from bench.target import checkpoint_sha256

BASELINE = REPO_ROOT / "results" / "baselines" / "smollm2-135m-cpu-k3"
ACCEPTANCE = REPO_ROOT / "scripts" / "acceptance.sh"


def default(script: str, name: str) -> str:
    match = re.search(rf"^{name}=\$\{{{name}:?-(.*)\}}$", script, re.MULTILINE)
    assert match, name
    return match.group(1)


def test_acceptance_defaults_match_the_committed_baseline():
    script = ACCEPTANCE.read_text()
    assert default(script, "BASELINE") == "results/baselines/smollm2-135m-cpu-k3"
    run_args = shlex.split(default(script, "RUN_ARGS"))
    args = build_parser().parse_args(["run", *run_args])
    config = load_config(args.config, {f: getattr(args, k) for k, f in RUN_OVERRIDES.items()})
    baseline = RunDir.open(BASELINE).read_manifest()
    b = baseline.config
    assert (config.draft_len, config.sampling, config.conversation, config.dataset.limit) == (
        b.draft_len,
        b.sampling,
        b.conversation,
        b.dataset.limit,
    )
    assert config.target == b.target
    assert config.engine.model_dump(exclude={"drafter"}) == b.engine.model_dump(exclude={"drafter"})
    # The drafter: the committed EAGLE-3 head, the same files wherever the repository lies.
    assert config.engine.drafter.kind == b.engine.drafter.kind == "eagle3"
    head = Path(config.engine.drafter.checkpoint)
    assert checkpoint_sha256(head) == baseline.engine.details["drafter"]["checkpoint_sha256"]
    assert baseline.status == "complete"


def test_ci_gate_passes_the_baseline_against_itself(tmp_path):
    gate = default(ACCEPTANCE.read_text(), "GATE")
    assert (REPO_ROOT / gate).is_file()
    code = main(
        [
            "compare",
            str(BASELINE),
            str(BASELINE),
            "--gate",
            str(REPO_ROOT / gate),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "compare.json").read_text())
    assert [j["ok"] for j in data["joint_acceptance"]] == [True, True, True]


def test_ci_runs_tests_then_the_gate():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert ci.index("scripts/test.sh") < ci.index("scripts/acceptance.sh")
    assert "BENCH_REQUIRE_BROWSER=1" in ci and "chromium-driver" in ci


def test_workflow_has_gpu_and_cpu_jobs():
    flow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "acceptance.yml").read_text())
    gpu, cpu = flow["jobs"]["gpu"], flow["jobs"]["cpu"]
    assert gpu["runs-on"] == ["self-hosted", "${{ vars.BENCH_GPU_RUNNER_LABEL }}"]
    gpu_steps = " ".join(s.get("run", "") for s in gpu["steps"])
    # The Kimi config launches trtllm-serve itself (its `launch:` section).
    assert "kimi-k2-thinking-eagle3.yaml" in gpu["env"]["RUN_CONFIG"]
    assert "$DRAFT_LEN" in gpu_steps
    for job in (gpu, cpu):
        runs = " ".join(s.get("run", "") for s in job["steps"])
        assert "scripts/acceptance.sh" in runs
        upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload")]
        assert upload and "results/dashboard/" in upload[0]["with"]["path"]

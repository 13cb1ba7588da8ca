"""Everything after `records` works with neither torch nor transformers importable:
report, compare and dashboard run on the committed baseline with both blocked."""

from __future__ import annotations

import shutil
import subprocess
import sys

from bench.config import REPO_ROOT

BLOCK = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'tensorrt_llm'):\n"
    "    sys.modules[name] = None  # any import of them now raises ImportError\n"
    "from bench.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def run_blocked(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, cwd=REPO_ROOT
    )


def test_report_compare_dashboard_without_torch(tmp_path):
    baseline = REPO_ROOT / "results" / "baselines" / "smollm2-135m-cpu-k3"
    run = tmp_path / "runs" / "copy"
    shutil.copytree(baseline, run)
    (run / "summary.json").unlink()
    result = run_blocked("report", str(run))
    assert result.returncode == 0, result.stderr
    result = run_blocked("compare", str(baseline), str(run), "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr
    assert "no regression" in result.stdout
    result = run_blocked("dashboard", str(tmp_path / "runs"), "--out", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()

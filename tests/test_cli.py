"""The command line as users meet it: `python -m bench ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import REPO_ROOT
from tests.conftest import write_questions


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        env=env,
        timeout=1800,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--config", "no/such.yaml"], "config file no/such.yaml does not exist"),
        (["--draft-len", "-1"], "draft_len: Input should be greater than or equal to 0"),
        (["--categories", "poetry"], "unknown categories ['poetry']"),
        (["--questions", "no/such.jsonl"], "does not exist"),
        (["--limit", "0"], "dataset.limit"),
        (["--dataset", "jsonl"], "name: jsonl needs questions"),
        (["--quantize", "int8-dynamic", "--engine", "openai"], "reference engine only"),
        (
            ["--reasoning-effort", "ultra"],
            "conversation.reasoning_effort: Input should be 'low', 'medium' or 'high'",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_nonzero(tmp_path, args, fragment):
    result = bench("run", *args, "--out", str(tmp_path / "run"))
    assert_one_clear_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_serve_refuses_a_port_out_of_range():
    result = bench("serve", "--port", "99999")
    assert_one_clear_error(result, "--port must be between 1 and 65535, got 99999")


def test_malformed_question_file_names_line(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", 1)
    questions.write_text(questions.read_text() + '{"question_id": 999, "turns": ["a"]}\n')
    result = bench("run", "--questions", str(questions), "--out", str(tmp_path / "run"))
    assert_one_clear_error(result, "line 9: a question needs exactly two turns, found 1")
    assert not (tmp_path / "run").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = bench("run", "--out", str(blocker / "run"))
    assert_one_clear_error(result, "is not a folder")
    result = bench("run", "--out", "/proc/bench-run")
    assert_one_clear_error(result, "is not writable")


def test_resume_refuses_new_settings(tmp_path):
    result = bench("run", "--resume", str(tmp_path), "--draft-len", "2")
    assert_one_clear_error(result, "--resume takes the settings of the run being resumed")
    result = bench("run", "--resume", str(tmp_path))
    assert_one_clear_error(result, "is not a run directory")


@pytest.mark.slow
def test_run_then_report_on_the_real_embedded_model(tmp_path):
    run = tmp_path / "run"
    result = bench(
        "run", "--question-ids", "81,131", "--max-tokens", "24", "--out", str(run), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert "| Category | MT Bench Acceptance Rate |" in result.stdout
    assert "| extraction |" in result.stdout and f"run directory: {run}" in result.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["engine"]["name"] == "reference"
    assert manifest["engine"]["details"]["dtype"] == "float32"
    assert manifest["packages"]["torch"] and manifest["config"]["sampling"]["max_tokens"] == 24
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    # Turns finish in any order (they are decoded together); each is written when it ends.
    assert sorted((r["question_id"], r["turn"]) for r in records) == [
        (81, 1),
        (81, 2),
        (131, 1),
        (131, 2),
    ]
    for r in records:
        assert r["steps"][0] == 1 and r["prefill_step"] is True
        assert sum(r["steps"]) == r["output_tokens"] == len(r["token_ids"]) <= 24
        assert max(r["steps"]) <= 4 and r["finish_reason"] in ("stop", "length")
    before = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    (run / "report.md").unlink()
    result = bench("report", str(run))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text()) == before
    assert (run / "report.md").read_text().count("| extraction |") >= 3


def test_an_incomplete_run_exits_1_naming_the_resume_command(tmp_path, monkeypatch, capsys):
    """Failed or missing turns are not unusable input (exit 2): the run is there, to finish."""
    from bench import cli, runner
    from bench.rundir import RunDir
    from bench.summary import summarize
    from tests.test_metrics import WORKED

    summary = summarize(WORKED, draft_len=3, expected_question_ids=[81, 82])
    outcome = runner.RunOutcome(RunDir(tmp_path / "run"), summary, 12, 1.0, 12, 1.0)
    monkeypatch.setattr(runner, "execute", lambda *args, **kwargs: outcome)
    assert cli.main(["run", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: 0 turns failed and 2 are missing; finish them with: "
        f"python -m bench run --resume {tmp_path / 'run'}"
    )

"""notebooks/category_breakdown.ipynb: committed clean, and runs top to bottom headlessly
against real runs of the embedded engine."""

from __future__ import annotations

import json
import os

import pytest

from bench.config import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "category_breakdown.ipynb"
REFERENCE = REPO_ROOT / "configs" / "references" / "kimi-k2-thinking-eagle3.yaml"


def code_cells() -> list[dict]:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def test_notebook_is_committed_without_outputs():
    for cell in code_cells():
        assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_reads_runs_only_through_bench_analysis():
    source = "\n".join("".join(c["source"]) for c in code_cells())
    assert "analysis.load_runs(RUN_DIRS)" in source
    for forbidden in ("import json", "json.load", "open(", "read_text", "records.jsonl"):
        assert forbidden not in source


@pytest.mark.slow
def test_notebook_runs_headlessly_on_real_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("pandas")
    from bench.config import load_config
    from bench.runner import execute

    # Two real runs of the embedded engine on two questions: draft length 3 against the
    # model card's table, and draft length 2, so the comparison section runs too.
    runs = []
    for draft_len in (3, 2):
        config = load_config(
            None,
            {
                "draft_len": draft_len,
                "dataset.question_ids": [81, 111],
                "sampling.max_tokens": 8,
                "reference": str(REFERENCE),
            },
        )
        runs.append(execute(config, out=tmp_path / f"k{draft_len}", quiet=True))

    monkeypatch.setenv("BENCH_RUN_DIRS", os.pathsep.join(str(o.run.path) for o in runs))
    monkeypatch.setenv("BENCH_BUCKET_TOKENS", "4")
    # The kernel imports this checkout's bench, whatever else is installed.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any cell error

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # every chart, the comparison's included
    html = "\n".join(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    # The notebook's figures are summary.json's: the overall AL of the first run, and the
    # model card's writing value beside it; the comparison table reached its paired columns.
    first = runs[0].summary.overall
    assert first is not None and f"{first.acceptance_length:.3f}" in html
    assert "2.282" in html and "exceeds_noise" in html
    written = json.loads((runs[0].run.summary_path).read_text(encoding="utf-8"))
    assert written["overall"]["acceptance_length"] == pytest.approx(first.acceptance_length)

"""`bench sweep`: the grid's bad input in one sentence, resuming, a folder of another
sweep refused, lossless cells, the recommendation's arithmetic, and the prediction of
smaller draft lengths from a larger one."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.config import load_config
from bench.errors import BenchError
from bench.sweep import Cell, check_grid, recommend, run_sweep


@pytest.mark.parametrize(
    "draft_lens, concurrencies, message",
    [
        ([0, 1, -2], [1], "draft lengths must be 0 or more"),
        ([0, 1, 1], [1], "lists a draft length twice"),
        ([0, 2], [0], "concurrency must be 1 or more"),
        ([0, 2], [4, 4], "--concurrency lists a value twice"),
    ],
)
def test_bad_grids_get_one_sentence(draft_lens, concurrencies, message):
    with pytest.raises(BenchError, match=message):
        check_grid(draft_lens, concurrencies)


def test_bad_grid_on_the_command_line(tmp_path, capsys):
    code = main(["sweep", "--draft-len", "0,2,2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --draft-len lists a draft length twice: [0, 2, 2]"
    assert not (tmp_path / "s").exists()


def cell(k: int, speedup: float | None, ci=None) -> Cell:
    return Cell(
        draft_len=k,
        concurrency=1,
        run=f"cells/k{k}-c1",
        status="complete",
        acceptance_length=None,
        acceptance_length_ci95=None,
        decode_acceptance_length=None,
        tokens_per_s=None,
        tokens_per_s_ci95=None,
        aggregate_tokens_per_s=None,
        tpot_s=None,
        ttft_s=None,
        speedup=speedup,
        speedup_ci95=ci,
    )


def test_recommendation_names_the_fastest_its_margin_and_whether_intervals_separate():
    cells = [
        cell(0, None),
        cell(1, 1.20, (1.10, 1.30)),
        cell(2, 1.50, (1.40, 1.60)),
        cell(3, 1.45, (1.30, 1.55)),
    ]
    r = recommend(1, cells)
    assert (r.draft_len, r.runner_up) == (2, 3) and r.margin == pytest.approx(0.05)
    assert r.separated is False and r.beats_speculation_off
    assert "draft length 2" in r.message and "overlap" in r.message


def test_recommendation_says_when_nothing_beats_speculation_off():
    r = recommend(16, [cell(0, None), cell(1, 0.9, (0.8, 0.95)), cell(2, 0.7, (0.6, 0.8))])
    assert r.draft_len == 0 and r.beats_speculation_off is False and r.runner_up == 1
    assert "no draft length beats speculation off" in r.message


@pytest.mark.slow
def test_sweep_runs_resumes_refuses_other_settings_and_every_cell_is_lossless(tmp_path):
    base = load_config(None, {"dataset.question_ids": [81, 131], "sampling.max_tokens": 24})
    out = tmp_path / "sweep"
    result = run_sweep(base, [0, 2], [1, 2], out, quiet=True)
    assert [(c.draft_len, c.concurrency) for c in result.cells] == [
        (0, 1),
        (2, 1),
        (0, 2),
        (2, 2),
    ]
    assert all(c.status == "complete" for c in result.cells)
    zero = [c for c in result.cells if c.draft_len == 0]
    assert all(c.acceptance_length == 1.0 for c in zero)
    assert all(c.speedup is not None for c in result.cells if c.draft_len == 2)
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["cells"]) == 4 and len(saved["recommendations"]) == 2
    assert (out / "report.md").read_text().startswith("# Draft-length sweep")
    assert (out / "plots" / "speedup.png").exists()

    tokens = {}
    for c in result.cells:  # temperature 0: every cell gives the same tokens
        for line in (out / c.run / "records.jsonl").read_text().splitlines():
            r = json.loads(line)
            tokens.setdefault((r["question_id"], r["turn"]), set()).add(tuple(r["token_ids"]))
    assert all(len(v) == 1 for v in tokens.values())

    # A rerun skips the finished cells; an interrupted cell is resumed, alone.
    records = out / "cells" / "k2-c2" / "records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:1]) + "\n")
    manifest = out / "cells" / "k2-c2" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "status": "interrupted"}))
    before = {c.run: (out / c.run / "records.jsonl").stat().st_mtime_ns for c in result.cells}
    again = run_sweep(base, [0, 2], [1, 2], out, quiet=True)
    after = {c.run: (out / c.run / "records.jsonl").stat().st_mtime_ns for c in again.cells}
    changed = [run for run in before if before[run] != after[run]]
    assert changed == ["cells/k2-c2"] and all(c.status == "complete" for c in again.cells)

    with pytest.raises(BenchError, match="holds another sweep's settings"):
        run_sweep(base, [0, 3], [1, 2], out, quiet=True)


def test_dashboard_shows_the_newest_sweep_and_not_its_cells_as_runs(tmp_path, make_run):
    from bench.dashboard import build_dashboard
    from bench.rundir import write_text_atomic
    from bench.sweep import SweepResult, SweepSettings, recommend

    root = tmp_path / "results"
    make_run("run-a", root=root / "runs", started_at="2026-11-28T08:00:00+00:00")
    sweep_dir = root / "sweeps" / "s1"
    settings = SweepSettings(base={"name": "x"}, draft_lens=[0, 1, 2], concurrencies=[1])
    (sweep_dir / "cells").mkdir(parents=True)
    write_text_atomic(sweep_dir / "sweep-settings.json", settings.model_dump_json())
    make_run("k0-c1", root=sweep_dir / "cells", started_at="2026-11-29T08:00:00+00:00")
    cells = [cell(0, None), cell(1, 1.2, (1.1, 1.3)), cell(2, 1.4, (1.3, 1.5))]
    result = SweepResult(
        settings=settings, cells=cells, recommendations=[recommend(1, cells)], warnings=[]
    )
    write_text_atomic(sweep_dir / "sweep.json", result.model_dump_json())
    site = build_dashboard(root, tmp_path / "dash")
    assert [r.run_id for r in site.runs] == ["run-a"]  # the cell is not a run of its own
    assert "Latest sweep" in site.index_html and "draft length 2 (1.400x" in site.index_html
    assert "Speedup over speculation off" in site.index_html
    assert "### Latest sweep `s1`" in site.markdown


@pytest.mark.slow
def test_a_larger_draft_length_predicts_the_smaller_ones_on_a_tiny_model():
    """A tiny target and a draft model that is the target with its weights perturbed (so
    acceptance is high but not total): the run at k = 4 predicts the decode AL at k = 1, 2,
    3 through its joint acceptance per position, and each prediction lands within 5 % of
    the run at that k (measured here: 1.844 vs 1.899, 2.656 vs 2.739, 3.456 vs 3.500)."""
    import torch
    from tiny_models import tiny_target

    from bench.engines import SamplingParams
    from bench.engines.drafters import DraftModelDrafter
    from bench.engines.speculative import SpeculativeDecoder
    from bench.metrics import histogram, joint_acceptance, predicted_decode_acceptance_length

    target = tiny_target(layers=2, scale=4.0)
    draft = tiny_target(layers=2, scale=4.0)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p, q in zip(target.parameters(), draft.parameters()):
            q.copy_(p + 0.02 * torch.randn(p.shape, generator=noise))
    prompts = [[0, 5 + i, 9, 17 + 2 * i, 3] for i in range(6)]

    def decode_steps(k: int) -> list[int]:
        decoder = SpeculativeDecoder(target, DraftModelDrafter(draft, 64, 1), {999}, 1)
        return [
            e for p in prompts for e in decoder.run_alone(p, SamplingParams(0.0, 64, k)).steps[1:]
        ]

    joint = joint_acceptance(histogram(decode_steps(4), 4))
    assert 0.5 < joint[0] < 0.99  # neither trivial nor total acceptance
    for k in (1, 2, 3):
        measured = decode_steps(k)
        predicted = predicted_decode_acceptance_length(joint, k)
        assert predicted == pytest.approx(sum(measured) / len(measured), rel=0.05)

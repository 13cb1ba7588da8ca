"""bench.analysis loaders against the worked example of METRICS.md, in a real run directory
(manifest.json through `Manifest`, records.jsonl through `RecordWriter`)."""

from __future__ import annotations

import os

import pytest

pd = pytest.importorskip("pandas")

from bench import analysis  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.records import RecordWriter  # noqa: E402
from bench.references import ReferenceTable  # noqa: E402
from bench.rundir import DatasetInfo, Manifest, RunDir  # noqa: E402
from tests.test_metrics import WORKED, record  # noqa: E402


def make_run(path, records, *, draft_len=3, started_at="2026-01-01T00:00:00+00:00", run_id=None):
    """A run directory as `bench run` leaves it (no summary.json: loaders never read it)."""
    run = RunDir.create(path)
    ids = sorted({r.question_id for r in records})
    run.write_manifest(
        Manifest(
            run_id=run_id or path.name,
            config=load_config(None, {"draft_len": draft_len}),
            dataset=DatasetInfo(source="test", sha256="0", question_ids=ids),
            started_at=started_at,
            status="complete",
        )
    )
    with RecordWriter(run.records_path) as writer:
        for r in records:
            writer.append(r)
    return path


@pytest.fixture
def worked(tmp_path):
    return analysis.load_run(make_run(tmp_path / "worked", WORKED), question_texts=False)


def test_categories_frame_reproduces_the_worked_example(worked):
    frame = analysis.categories_frame([worked]).set_index("category")
    w = frame.loc["writing"]
    assert round(w["acceptance_length"], 3) == 2.444  # (11 + 11) / (5 + 4)
    assert round(w["decode_acceptance_length"], 3) == 2.857  # (10 + 10) / (4 + 3)
    assert round(w["turn1_acceptance_length"], 3) == 2.200  # 11 / 5
    assert round(w["turn2_acceptance_length"], 3) == 2.750  # 11 / 4
    assert round(w["draft_acceptance_rate"], 3) == 0.619  # 13 / 21
    assert (w["steps"], w["decode_steps"], w["output_tokens"]) == (9, 7, 22)
    assert (w["ci95_low"], w["ci95_high"]) == pytest.approx((22 / 9, 22 / 9))
    assert list(frame.index) == ["writing", "overall"]
    assert frame.loc["overall", "acceptance_length"] == pytest.approx(22 / 9)
    # The run's identity travels with every row.
    assert (w["run"], w["engine"], w["model"], w["draft_len"]) == (
        "worked",
        "reference",
        "SmolLM2-135M-Instruct",
        3,
    )
    assert (w["reasoning_effort"], w["temperature"]) == ("medium", 0.0)
    assert {"commit", "max_tokens", "started_at"} <= set(frame.columns)


def test_histogram_and_positions_frames(worked):
    hist = analysis.histogram_frame([worked])
    writing = hist[(hist["category"] == "writing") & (hist["turn"] == analysis.ALL)]
    assert list(writing["e"]) == [1, 2, 3, 4]
    assert list(writing["decode_steps"]) == [1, 2, 1, 3]  # decode steps 4,2,1,3,4,4,2
    assert list(writing["share"]) == pytest.approx([1 / 7, 2 / 7, 1 / 7, 3 / 7])
    turn2 = hist[(hist["category"] == "writing") & (hist["turn"] == "2")]
    assert list(turn2["decode_steps"]) == [0, 1, 0, 2]  # 4, 4, 2
    pos = analysis.positions_frame([worked])
    w = pos[(pos["category"] == "writing") & (pos["turn"] == analysis.ALL)]
    assert list(w["position"]) == [1, 2, 3]
    assert list(w["joint"]) == pytest.approx([6 / 7, 4 / 7, 3 / 7])  # 0.857, 0.571, 0.429
    assert list(w["conditional"]) == pytest.approx([6 / 7, 4 / 6, 3 / 4])  # 0.857, 0.667, 0.750


def test_step_turn_and_question_frames(worked):
    steps = analysis.steps_frame([worked])
    assert len(steps) == 9 and steps["tokens"].sum() == 22
    turn1 = steps[steps["turn"] == 1]
    assert list(turn1["tokens"]) == [1, 4, 2, 1, 3]
    assert list(turn1["position"]) == [0, 1, 5, 7, 8]
    assert list(steps["prefill"]) == [True, False, False, False, False, True, False, False, False]
    turns = analysis.turns_frame([worked]).set_index("turn")
    assert turns.loc[1, "acceptance_length"] == pytest.approx(2.2)
    assert turns.loc[2, "acceptance_length"] == pytest.approx(2.75)
    assert turns.loc[1, "decode_acceptance_length"] == pytest.approx(10 / 4)
    questions = analysis.questions_frame([worked])
    assert len(questions) == 1
    q = questions.iloc[0]
    assert round(q["acceptance_length"], 3) == 2.444
    assert (q["steps"], q["output_tokens"], q["finish_reasons"]) == (9, 22, "stop/stop")


def test_position_buckets_use_the_metrics_function(worked):
    frame = analysis.position_buckets_frame([worked], bucket_tokens=4)
    writing = frame[frame["category"] == "writing"]
    assert list(writing["start_tokens"]) == [0, 4, 8]
    assert list(writing["decode_acceptance_length"]) == pytest.approx([8 / 2, 7 / 3, 5 / 2])
    overall = frame[frame["category"] == analysis.OVERALL]
    assert list(overall["decode_steps"]) == [2, 3, 2]


def test_card_table_beside_a_reference(worked):
    reference = ReferenceTable(
        name="card", source="test", draft_len=3, categories={"writing": 2.0, "math": 3.0}
    )
    table = analysis.card_table(worked, reference).set_index("category")
    assert table.loc["writing", "reference"] == 2.0
    assert table.loc["writing", "delta"] == pytest.approx(22 / 9 - 2.0)
    assert table.loc["writing", "delta_pct"] == pytest.approx(100 * (22 / 9 - 2.0) / 2.0)
    # One question: the interval has zero width, so it cannot say whether the card is in it.
    assert table.loc["writing", "reference_in_ci95"] is None
    assert table.loc["overall", "reference"] == pytest.approx(2.5)  # mean of the card's two
    assert "reference" not in analysis.card_table(worked).columns


def test_incomplete_run_counts_only_complete_questions(tmp_path):
    records = [
        *WORKED,
        record(82, 1, [1, 2]),
        record(83, 1, [], finish_reason="error", error="boom", prefill_step=False),
    ]
    run = analysis.load_run(make_run(tmp_path / "partial", records), question_texts=False)
    assert run.summary.counted_questions == 1 and not run.summary.complete
    turns = analysis.turns_frame([run])
    assert list(turns["counted"]) == [True, True, False, False]
    assert list(turns["ok"]) == [True, True, True, False]
    assert analysis.categories_frame([run]).set_index("category").loc["writing", "n_questions"] == 1
    assert set(analysis.steps_frame([run])["question_id"]) == {81, 82}


def test_lowest_questions_sorted_with_snippets(tmp_path):
    long_text = "word " * 50
    records = [
        *WORKED,
        record(82, 1, [1, 1, 1], text=long_text),
        record(82, 2, [1, 1]),
        record(83, 1, [1, 4, 4], category="math"),
        record(83, 2, [1, 4]),
    ]
    run = analysis.load_run(make_run(tmp_path / "three", records), question_texts=False)
    low = analysis.lowest_questions([run], n=2, snippet_chars=20)
    assert list(low["question_id"]) == [82, 81]
    assert low.loc[0, "acceptance_length"] == pytest.approx(1.0)
    assert len(low.loc[0, "answer"]) == 20 and low.loc[0, "answer"].endswith("…")
    assert low.loc[0, "question"] is None  # question texts not loaded
    # Turn 1: AL 2.2, 1.0, 3.0 at lengths 11, 3, 9 -> ranks (2,1,3) vs (3,1,2): rho = 0.5.
    # Turn 2: AL 2.75, 1.0, 2.5 at lengths 11, 2, 5 -> same ranks: rho = 1.
    rho = analysis.length_correlation(analysis.turns_frame([run])).set_index("turn")
    assert list(rho["turns"]) == [3, 3]
    assert list(rho["spearman_al_vs_length"]) == pytest.approx([0.5, 1.0])
    assert analysis.length_correlation(analysis.turns_frame([run])[:0]).empty


def test_compare_runs_pairs_shared_questions(tmp_path):
    base_records = [
        r
        for qid, al in zip(range(81, 87), [1, 2, 1, 2, 1, 2])
        for r in (record(qid, 1, [1, 1 + al]), record(qid, 2, [1, 1 + al]))
    ]
    better = [r.model_copy(update={"steps": [1, r.steps[1] + 1]}) for r in base_records]
    base = make_run(tmp_path / "base", base_records, started_at="2026-01-02T00:00:00+00:00")
    other = make_run(tmp_path / "other", better, draft_len=3)
    runs = analysis.load_runs([base, other, base], question_texts=False)
    assert [r.label for r in runs] == ["base", "other", "base#2"]
    comparison = analysis.compare_runs(runs, baseline="base").set_index(["run", "category"])
    row = comparison.loc[("other", "writing")]
    assert row["shared_questions"] == 6
    assert row["delta"] == pytest.approx(0.5) and row["paired_delta"] == pytest.approx(0.5)
    assert row["exceeds_noise"]  # every question gained 0.5: no noise at all
    card = analysis.card_table(
        runs[0], runs[0].reference("configs/references/kimi-k2-thinking-eagle3.yaml")
    )
    assert not card.set_index("category").loc["writing", "reference_in_ci95"]  # 2.282 > 2.0
    same = comparison.loc[("base#2", "overall")]
    assert same["paired_delta"] == 0 and not same["exceeds_noise"]
    with pytest.raises(BenchError, match="no loaded run is labelled 'nope'"):
        analysis.compare_runs(runs, baseline="nope")
    figure = analysis.plot_differences(comparison.reset_index())
    assert len(figure.axes) == 1


def test_default_run_dirs_newest_by_manifest_and_env_override(tmp_path, monkeypatch):
    # Folder names sort the other way round from the start times: the manifest decides.
    make_run(tmp_path / "runs" / "b-older", WORKED, started_at="2026-01-01T00:00:00+00:00")
    make_run(tmp_path / "baselines" / "a-newer", WORKED, started_at="2026-03-01T00:00:00+00:00")
    (tmp_path / "runs" / "not-a-run").mkdir()
    monkeypatch.delenv(analysis.RUN_DIRS_ENV, raising=False)
    assert [p.name for p in analysis.find_runs(tmp_path)] == ["b-older", "a-newer"]
    assert [p.name for p in analysis.default_run_dirs(tmp_path)] == ["a-newer"]
    monkeypatch.setenv(analysis.RUN_DIRS_ENV, os.pathsep.join(["/x/one", "/y/two"]))
    assert [str(p) for p in analysis.default_run_dirs(tmp_path)] == ["/x/one", "/y/two"]
    monkeypatch.delenv(analysis.RUN_DIRS_ENV)
    with pytest.raises(BenchError, match="no run directories"):
        analysis.default_run_dirs(tmp_path / "empty")


def test_plot_helpers_draw_every_frame(worked, tmp_path):
    runs = [worked]
    figures = [
        analysis.plot_categories(analysis.categories_frame(runs)),
        analysis.plot_turns(analysis.categories_frame(runs)),
        analysis.plot_histograms(analysis.histogram_frame(runs)),
        analysis.plot_positions(analysis.positions_frame(runs)),
        analysis.plot_length(analysis.turns_frame(runs)),
        analysis.plot_position_buckets(analysis.position_buckets_frame(runs, 4)),
    ]
    for i, fig in enumerate(figures):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000


def test_reference_by_path_relative_to_the_repo_or_the_runs_own(worked):
    assert worked.reference() is None  # the default config names no reference
    card = worked.reference("configs/references/kimi-k2-thinking-eagle3.yaml")
    assert card is not None and card.categories["writing"] == 2.282


def test_error_bars_survive_rounding_and_missing_intervals(worked):
    frame = analysis.categories_frame([worked])
    # A one-question interval equals the value up to float summation order.
    frame["ci95_low"] = frame["acceptance_length"] + 1e-15
    frame.loc[0, "ci95_high"] = None
    assert analysis.plot_categories(frame).axes


def test_segments_frame_holds_reasoning_answer_and_both(tmp_path):
    """The segment worked example of docs/metrics.md as a frame: the reasoning's and the
    answer's figures, with the split's turn counts."""
    thinking = record(81, 1, [1, 4, 2, 3, 1, 4, 2]).model_copy(
        update={"reasoning_tokens": 9, "text": "<think>…</think>…"}
    )
    plain = record(81, 2, [1, 3]).model_copy(update={"reasoning_tokens": 0})
    run = analysis.load_run(make_run(tmp_path / "seg", [thinking, plain]), question_texts=False)
    frame = analysis.segments_frame([run]).set_index(["category", "segment"])
    reasoning, answer = frame.loc[("overall", "reasoning")], frame.loc[("overall", "answer")]
    assert reasoning["acceptance_length"] == pytest.approx(10 / 4)
    assert answer["acceptance_length"] == pytest.approx(7 / 3)
    assert reasoning["histogram"] == [0, 1, 1, 1] and answer["histogram"] == [1, 1, 0, 1]
    assert (reasoning["split_turns"], reasoning["no_reasoning_turns"]) == (1, 1)
    assert frame.loc[("writing", "both"), "acceptance_length"] == pytest.approx(17 / 7)

"""Speed figures (docs/metrics.md "Speed"): the formulas with their arithmetic in view, the
summary's speed block, untimed turns, and the paired speedup."""

from __future__ import annotations

import pytest

import bench.runner as runner
from bench.config import load_config
from bench.speed import (
    AggregateSpeed,
    TimedTurn,
    aggregate_tokens_per_s,
    figure,
    mean_step_s,
    question_figures,
    question_tokens_per_s,
    request_tokens_per_s,
    speedup,
    throughput_speedup,
    time_per_output_token_s,
)
from bench.summary import summarize
from tests.conftest import records_for, turn, write_questions
from tests.test_runner import ScriptedEngine


def test_turn_formulas_by_hand():
    # A turn of 11 tokens in 5 steps: first token at 0.2 s, last at 1.2 s.
    assert time_per_output_token_s(1.2, 0.2, 11) == pytest.approx(1.0 / 10)
    assert request_tokens_per_s(11, 1.2) == pytest.approx(11 / 1.2)
    assert mean_step_s(1.2, 0.2, 5) == pytest.approx(1.0 / 4)
    assert question_tokens_per_s([11, 9], [1.2, 0.8]) == pytest.approx(20 / 2.0)
    assert aggregate_tokens_per_s(1000, 4.0) == 250.0
    # Undefined, not zero or infinite:
    assert time_per_output_token_s(0.5, 0.5, 1) is None
    assert mean_step_s(0.5, 0.5, 1) is None
    assert request_tokens_per_s(3, 0.0) is None
    assert aggregate_tokens_per_s(10, 0.0) is None


def test_question_pools_both_turns():
    t1 = TimedTurn(output_tokens=11, steps=5, ttft_s=0.2, turn_s=1.2)
    t2 = TimedTurn(output_tokens=9, steps=4, ttft_s=0.4, turn_s=0.8)
    both = question_figures([t1, t2])
    assert both["tokens_per_s"] == pytest.approx(20 / 2.0)
    assert both["ttft_s"] == pytest.approx(0.3)
    assert both["tpot_s"] == pytest.approx((1.0 + 0.4) / (10 + 8))
    assert both["mean_step_s"] == pytest.approx((1.0 + 0.4) / (4 + 3))
    assert question_figures([t1])["tokens_per_s"] == pytest.approx(11 / 1.2)


def test_worked_example_latency_speedup():
    """docs/metrics.md: 20 and 30 tokens/s with speculation, 10 and 20 without."""
    result = speedup({1: 10.0, 2: 20.0}, {1: 20.0, 2: 30.0})
    assert result.ratio == pytest.approx(25 / 15)
    assert round(result.ratio, 3) == 1.667
    assert result.shared_questions == 2
    low, high = result.ci95
    # Resamples are (1,1): 2.0, (2,2): 1.5, mixed: 1.667; the interval spans them.
    assert low == pytest.approx(1.5) and high == pytest.approx(2.0)


def test_speedup_pairs_shared_questions_only_and_is_seeded():
    base = {q: 10.0 + q for q in range(10)}
    other = {q: 2 * v for q, v in base.items() if q != 0}
    strata = {q: "a" if q < 5 else "b" for q in range(10)}
    result = speedup(base, other, strata)
    assert result.shared_questions == 9
    # Every pair is exactly doubled: the ratio and its whole interval are 2.
    assert result.ratio == pytest.approx(2.0) and result.ci95 == pytest.approx((2.0, 2.0))
    noisy = {q: v * (1.5 + 0.1 * (q % 3)) for q, v in base.items()}
    assert speedup(base, noisy, strata) == speedup(base, noisy, strata)
    assert speedup({}, other).ratio is None
    assert speedup({1: 5.0}, {1: 10.0}).ci95 is None


def test_throughput_speedup_is_ratio_of_aggregates():
    off = AggregateSpeed(output_tokens=1000, decode_s=10.0, tokens_per_s=100.0, concurrency=4)
    on = AggregateSpeed(output_tokens=1000, decode_s=5.0, tokens_per_s=200.0, concurrency=4)
    assert throughput_speedup(off, on) == 2.0
    assert throughput_speedup(off, None) is None


def test_figure_interval_uses_the_al_scheme():
    values = {1: 1.0, 2: 3.0, 3: None}
    f = figure(values)
    assert f.mean == 2.0 and f.n_questions == 2
    assert f.ci95[0] >= 1.0 and f.ci95[1] <= 3.0
    assert figure({1: 2.0}).ci95 is None
    assert figure({}).mean is None


def timed(records, ttft_s: float = 0.1):
    return [r.model_copy(update={"ttft_s": ttft_s}) for r in records]


def test_summary_speed_block_per_category_turn_and_overall():
    records = timed(records_for())
    speed = summarize(records, 3).speed
    assert speed.timed_questions == 16 and speed.untimed_turns == []
    assert speed.overall.n_questions == 16 and set(speed.categories) == {
        r.category for r in records
    }
    row = next(q for q in speed.questions if q.question_id == 81)
    r1, r2 = (r for r in records if r.question_id == 81)
    assert row.tokens_per_s == pytest.approx(
        (r1.output_tokens + r2.output_tokens) / (r1.duration_s + r2.duration_s)
    )
    writing = speed.categories["writing"]
    rows = [q.tokens_per_s for q in speed.questions if q.category == "writing"]
    assert writing.tokens_per_s.mean == pytest.approx(sum(rows) / len(rows))
    assert writing.turns["1"].ttft_s.mean == pytest.approx(0.1)
    assert speed.overall.tokens_per_s.ci95 is not None


def test_untimed_turns_are_listed_and_not_averaged_in():
    records = timed(records_for())
    records[0] = records[0].model_copy(update={"ttft_s": None})  # question 81, turn 1
    summary = summarize(records, 3)
    speed = summary.speed
    assert speed.untimed_turns == [(81, 1)]
    assert speed.timed_questions == 15 and 81 not in {q.question_id for q in speed.questions}
    assert summary.counted_questions == 16  # acceptance still counts it


def test_summary_without_any_timing_has_no_speed_figures():
    speed = summarize(records_for(), 3).speed
    assert speed.overall is None and speed.timed_questions == 0
    assert len(speed.untimed_turns) == 32


def test_timing_does_not_change_acceptance():
    plain = summarize(records_for(), 3).model_dump(exclude={"speed"})
    assert summarize(timed(records_for()), 3).model_dump(exclude={"speed"}) == plain


def test_turn_with_one_token_has_no_tpot_but_keeps_tokens_per_s():
    records = [
        turn(81, 1, [1], ttft_s=0.2, duration_s=0.2),
        turn(81, 2, [1, 2], ttft_s=0.2, duration_s=0.4),
    ]
    speed = summarize(records, 3).speed
    block = speed.overall.turns["1"]
    assert block.tpot_s.mean is None and block.mean_step_s.mean is None
    assert block.tokens_per_s.mean == pytest.approx(5.0)
    assert speed.overall.tpot_s.mean == pytest.approx(0.2 / 2)


# --- a run through the scripted engine: the manifest's timing and the aggregate ----------


class TimedEngine(ScriptedEngine):
    """test_runner's scripted engine, timing its first token as a real engine does."""

    async def generate(self, prompt_ids, sampling, messages=None):
        generation = await super().generate(prompt_ids, sampling, messages)
        return generation.model_copy(update={"ttft_s": 0.002})


@pytest.fixture
def timed_engine(monkeypatch, smol_tokenizer):
    options: dict = {}
    monkeypatch.setattr(
        runner, "create_engine", lambda config, chat: TimedEngine(smol_tokenizer, **options)
    )
    monkeypatch.setattr(runner, "load_tokenizer", lambda target: smol_tokenizer)
    return options


@pytest.fixture
def config(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", 2)
    return load_config(None, {"dataset.questions": str(questions), "dataset.limit": 3})


def test_run_records_what_affects_timing_and_its_aggregate(timed_engine, config, tmp_path):
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    manifest = outcome.run.read_manifest()
    timing = manifest.timing
    assert (timing.concurrency, timing.batch_size, timing.in_flight) == (1, 1, 1)
    (session,) = timing.sessions
    assert session.load_start.cpu_count and session.load_end is not None
    assert session.decode_s == outcome.decode_s
    assert session.decoded_tokens == outcome.decoded_tokens == outcome.output_tokens
    aggregate = outcome.summary.speed.aggregate
    assert aggregate.tokens_per_s == pytest.approx(outcome.output_tokens / outcome.decode_s)
    assert aggregate.concurrency == 1 and aggregate.sessions == 1
    assert outcome.summary.speed.timed_questions == 3
    # The run directory alone gives the same figures again.
    assert runner.rebuild_report(outcome.run.path).speed == outcome.summary.speed


def test_resume_adds_a_session_and_pools_the_finished_ones(timed_engine, config, tmp_path):
    options = timed_engine
    options["interrupt_on"] = 3
    with pytest.raises(runner.RunInterrupted):
        runner.execute(config, out=tmp_path / "run", quiet=True)
    options["interrupt_on"] = None
    resumed = runner.execute(None, resume=tmp_path / "run", quiet=True)
    sessions = resumed.run.read_manifest().timing.sessions
    assert len(sessions) == 2
    assert sessions[0].decode_s is None  # interrupted: its turns are not in the aggregate
    aggregate = resumed.summary.speed.aggregate
    assert aggregate.sessions == 1 and aggregate.output_tokens == sessions[1].decoded_tokens
    assert aggregate.output_tokens < resumed.output_tokens


def test_a_speculation_off_run_is_valid():
    records = [turn(q, t, [1] * 12) for q in (81, 82, 91, 92) for t in (1, 2)]
    assert summarize(records, 0).valid
    assert not summarize(records, 1).valid  # asked to speculate and never accepted


# --- bench compare: speed beside acceptance ----------------------------------------------


def faster(records, factor: float):
    return [r.model_copy(update={"duration_s": r.duration_s / factor}) for r in records]


def test_compare_shows_the_paired_speedup_and_does_not_gate_it(make_run, tmp_path, capsys):
    from tests.test_compare import gate

    base = make_run("base", timed(records_for()))
    cand = make_run("cand", faster(timed(records_for()), 0.5))  # twice as slow
    code, data, md = gate(tmp_path, str(base), str(cand))
    out = capsys.readouterr().out
    assert code == 0 and data["passed"]  # reported, not gated
    overall = data["speed"]["rows"][-1]
    assert overall["name"] == "overall" and overall["shared_questions"] == 16
    assert overall["speedup"] == pytest.approx(0.5)
    assert overall["speedup_ci95"] == pytest.approx([0.5, 0.5])
    assert overall["tpot_ratio"] < 1
    assert "speedup" in out and "### Speed" in md and "0.500" in md


def test_min_speedup_gates_the_overall_latency_speedup(make_run, tmp_path):
    from tests.test_compare import failing, gate

    base = make_run("base", timed(records_for()))
    cand = make_run("cand", faster(timed(records_for()), 1.5))
    strict = tmp_path / "gate.yaml"
    strict.write_text("min_speedup: 1.6\n")
    code, data, _ = gate(tmp_path, str(base), str(cand), "--gate", str(strict))
    assert code == 1 and failing(data) == [("speed", "overall")]
    strict.write_text("min_speedup: 1.4\n")
    code, data, _ = gate(tmp_path, str(base), str(cand), "--gate", str(strict), out="ok")
    assert code == 0 and data["speed"]["rows"][-1]["speedup"] == pytest.approx(1.5)
    untimed = make_run("untimed")
    code, data, _ = gate(tmp_path, str(untimed), str(cand), "--gate", str(strict), out="no")
    assert code == 1 and failing(data) == [("speed", "overall")] and data["speed"] is None


def test_allow_draft_len_gives_the_speedup_over_a_lower_draft_length(make_run, tmp_path):
    from tests.test_compare import failing, gate

    # The baseline decodes at draft length 1 (steps of at most 2 tokens), the candidate at 3.
    low = [turn(q, t, [1, 2, 1, 2, 2, 1], ttft_s=0.1) for q in (81, 82, 91, 92) for t in (1, 2)]
    high = [
        turn(q, t, [1, 4, 4], ttft_s=0.1, duration_s=0.25) for q in (81, 82, 91, 92) for t in (1, 2)
    ]
    base = make_run("k1", low, draft_len=1)
    cand = make_run("k3", high, draft_len=3)
    code, data, _ = gate(tmp_path, str(base), str(cand))
    assert code == 1 and failing(data) == [("incomparable", "draft_len")]
    assert data["speed"]["rows"][-1]["speedup"] == pytest.approx(2.0)
    code, data, _ = gate(tmp_path, str(base), str(cand), "--allow", "draft_len", out="allowed")
    assert code == 0 and data["speed"]["rows"][-1]["speedup"] == pytest.approx(2.0)


def test_speed_rows_and_throughput_from_two_summaries():
    from bench.dataset import CATEGORIES
    from bench.speed import speed_rows

    off = AggregateSpeed(output_tokens=100, decode_s=10.0, tokens_per_s=10.0, concurrency=1)
    on = AggregateSpeed(output_tokens=100, decode_s=4.0, tokens_per_s=25.0, concurrency=1)
    base = summarize(timed(records_for()), 3, aggregate=off).speed
    other = summarize(faster(timed(records_for()), 2.0), 3, aggregate=on).speed
    rows = speed_rows(base, other, CATEGORIES)
    assert [r.name for r in rows][-1] == "overall" and len(rows) == 9
    assert all(r.speedup == pytest.approx(2.0) for r in rows)
    assert throughput_speedup(base.aggregate, other.aggregate) == 2.5


def test_report_has_a_speed_table_with_the_aggregate_and_its_concurrency():
    from bench.report import render_report

    aggregate = AggregateSpeed(output_tokens=800, decode_s=4.0, tokens_per_s=200.0, concurrency=8)
    report = render_report(summarize(timed(records_for()), 3, aggregate=aggregate))
    section = report[report.index("## Speed") : report.index("## Sanity signals")]
    assert "| Category | tokens/s | 95 % CI | TTFT ms | TPOT ms | step ms |" in section
    assert "| writing |" in section and "| overall |" in section
    assert "200.0 output tokens/s at concurrency 8" in section
    untimed = render_report(summarize(records_for(), 3))
    assert "No timed turns" in untimed

"""The run pipeline through a scripted engine (real tokenizer and template, no model):
turn 2 gets turn 1's own output, resume redoes only what is missing, faults are recorded,
Ctrl-C leaves a resumable directory, bad input leaves nothing behind."""

from __future__ import annotations

import json

import pytest

import bench.runner as runner
from bench.config import load_config
from bench.engines import EngineInfo, SamplingParams
from bench.errors import BenchError
from bench.records import Generation, read_records
from tests.conftest import write_questions


class ScriptedEngine:
    """Answers every turn with a fixed step pattern and a text naming the call."""

    def __init__(
        self,
        tokenizer,
        fail_on: set[int] = frozenset(),
        interrupt_on: int | None = None,
        think: bool = False,
    ):
        self.tokenizer = tokenizer
        self.think = think
        self.prompts: list[list[int]] = []
        self.fail_on = fail_on
        self.interrupt_on = interrupt_on
        self.info = EngineInfo(name="scripted", version="1")

    async def generate(
        self, prompt_ids: list[int], sampling: SamplingParams, messages=None
    ) -> Generation:
        call = len(self.prompts)
        self.prompts.append(prompt_ids)
        if call == self.interrupt_on:
            raise KeyboardInterrupt
        if call in self.fail_on:
            raise RuntimeError("the engine fell over")
        text = f" reply number {call}"
        if self.think:
            text = f"<think>Plan reply {call} step by step.</think>" + text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        steps = [1] + [min(sampling.draft_len + 1, 2)] * ((len(ids) - 1) // 2)
        steps += [len(ids) - sum(steps)] if sum(steps) < len(ids) else []
        return Generation(
            steps=steps,
            drafted=[0] + [sampling.draft_len] * (len(steps) - 1),
            token_ids=ids,
            text=text,
            finish_reason="stop",
            duration_s=0.01,
        )

    async def aclose(self) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch, smol_tokenizer):
    engines: list[ScriptedEngine] = []
    options: dict = {}

    def make(config, chat):
        engine = ScriptedEngine(smol_tokenizer, **options)
        engines.append(engine)
        return engine

    monkeypatch.setattr(runner, "create_engine", make)
    monkeypatch.setattr(runner, "load_tokenizer", lambda target: smol_tokenizer)
    return engines, options


@pytest.fixture
def config(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", 2)
    return load_config(None, {"dataset.questions": str(questions), "dataset.limit": 3})


def test_turn_two_prompt_holds_the_models_own_turn_one_answer(scripted, config, tmp_path):
    engines, _ = scripted
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    engine = engines[0]
    records = read_records(outcome.run.records_path)
    assert [(r.question_id, r.turn) for r in records] == [
        (81, 1),
        (81, 2),
        (91, 1),
        (91, 2),
        (101, 1),
        (101, 2),
    ]
    for first, second in zip(records[0::2], records[1::2]):
        turn2_prompt = engine.tokenizer.decode(engine.prompts[records.index(second)])
        assert f"<|im_start|>assistant\n{first.text.strip()}<|im_end|>" in turn2_prompt
        assert "Now shorter." in turn2_prompt
    assert outcome.summary.complete and outcome.summary.counted_questions == 3


def test_run_directory_contents(scripted, config, tmp_path):
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    run = outcome.run.path
    assert {p.name for p in run.iterdir()} == {
        "manifest.json",
        "records.jsonl",
        "summary.json",
        "report.md",
        "plots",
    }
    assert {p.name for p in (run / "plots").iterdir()} == {
        "categories.png",
        "histogram.png",
        "positions.png",
    }
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["methodology_version"] == "1"
    assert manifest["dataset"]["question_ids"] == [81, 91, 101]
    assert manifest["chat_template"]["reasoning_effort_used"] is False
    assert manifest["engine"]["name"] == "scripted" and manifest["git"].keys() == {
        "commit",
        "dirty",
    }
    summary = json.loads((run / "summary.json").read_text())
    for key in (
        "acceptance_length",
        "decode_acceptance_length",
        "pooled_acceptance_length",
        "ci95",
        "histogram",
        "joint_acceptance",
        "conditional_acceptance",
        "draft_acceptance_rate",
    ):
        assert key in summary["overall"] and key in summary["categories"]["writing"]
        assert key in summary["categories"]["writing"]["turns"]["2"]
    line = json.loads((run / "records.jsonl").read_text().splitlines()[0])
    for key in (
        "question_id",
        "category",
        "turn",
        "steps",
        "prefill_step",
        "finish_reason",
        "output_tokens",
        "text",
    ):
        assert key in line
    assert (run / "report.md").read_text().splitlines()[
        4
    ] == "| Category | MT Bench Acceptance Rate |"


def test_failed_turn_is_recorded_and_resume_redoes_only_it(scripted, config, tmp_path):
    engines, options = scripted
    options["fail_on"] = {2}  # the third call: question 91, turn 1
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    assert not outcome.summary.complete
    assert [(f.question_id, f.turn) for f in outcome.summary.failed] == [(91, 1)]
    assert [(m.question_id, m.turn) for m in outcome.summary.missing] == [(91, 2)]
    assert "RuntimeError: the engine fell over" in outcome.summary.failed[0].error
    manifest = json.loads((outcome.run.manifest_path).read_text())
    assert manifest["status"] == "incomplete"

    options["fail_on"] = set()
    resumed = runner.execute(None, resume=tmp_path / "run", quiet=True)
    assert len(engines[1].prompts) == 2  # only question 91's two turns ran again
    assert resumed.summary.complete and resumed.summary.counted_questions == 3


def test_ctrl_c_leaves_a_resumable_directory(scripted, config, tmp_path):
    engines, options = scripted
    options["interrupt_on"] = 3
    with pytest.raises(runner.RunInterrupted, match="--resume"):
        runner.execute(config, out=tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert not (run / "summary.json").exists()  # nothing that looks like a result
    assert len(read_records(run / "records.jsonl")) == 3

    options["interrupt_on"] = None
    resumed = runner.execute(None, resume=run, quiet=True)
    assert len(engines[1].prompts) == 3
    assert resumed.summary.complete


def test_bad_input_leaves_nothing_behind(scripted, tmp_path):
    with pytest.raises(BenchError, match="unknown category"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question_id": 1, "category": "poetry", "turns": ["a", "b"]}\n')
        runner.execute(load_config(None, {"dataset.questions": str(bad)}), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("")
    with pytest.raises(BenchError, match="already exists and is not empty"):
        runner.execute(load_config(None), out=occupied)


def test_report_rebuilds_against_the_stored_reference_table(scripted, tmp_path):
    import shutil

    from bench.config import REPO_ROOT

    table = tmp_path / "card.yaml"
    shutil.copy(REPO_ROOT / "configs/references/kimi-k2-thinking-eagle3.yaml", table)
    questions = write_questions(tmp_path / "q.jsonl", 1)
    config = load_config(None, {"dataset.questions": str(questions), "reference": str(table)})
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    table.unlink()  # the run directory must not depend on the file any more
    runner.rebuild_report(outcome.run.path)
    report = (outcome.run.path / "report.md").read_text()
    assert "## Against nvidia/Kimi-K2-Thinking-Eagle3 model card" in report
    assert "| math |" in report and "3.340" in report


def test_every_turn_of_a_long_conversation_gets_the_models_own_earlier_answers(
    scripted, tmp_path, smol_tokenizer
):
    """A user's JSONL (OpenAI messages) with three user turns and a one-turn line: each
    turn's prompt holds the model's own earlier answers, never the recorded assistant's."""
    path = tmp_path / "mine.jsonl"
    lines = [
        {
            "id": "chat-a",
            "messages": [
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": "RECORDED ANSWER"},
                {"role": "user", "content": "Second question?"},
                {"role": "user", "content": "Third question?"},
            ],
        },
        {"question_id": 9, "category": "ops", "turns": ["Only one turn."]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    engines, _ = scripted
    config = load_config(None, {"dataset.name": "jsonl", "dataset.questions": str(path)})
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.records_path)
    assert sorted(r.key for r in records) == [(1, 1), (1, 2), (1, 3), (9, 1)]
    third = next(r for r in records if r.key == (1, 3))
    prompt = smol_tokenizer.decode(engines[0].prompts[third_call(records, third)])
    earlier = [r.text.strip() for r in records if r.question_id == 1 and r.turn < 3]
    assert all(text in prompt for text in earlier)
    assert "RECORDED ANSWER" not in prompt
    summary = outcome.summary
    assert summary.complete and summary.dataset == "jsonl"
    assert list(summary.categories) == ["default", "ops"]
    assert set(summary.overall.turns) == {"1", "2", "3"}
    assert summary.overall.turns["3"].n_questions == 1
    manifest = json.loads((outcome.run.path / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "jsonl"
    assert manifest["dataset"]["turn_counts"] == [3, 1]
    rebuilt = runner.rebuild_report(outcome.run.path)
    assert rebuilt.model_dump() == summary.model_dump()


def third_call(records, record) -> int:
    """The engine call that produced `record`: records are appended in call order."""
    return records.index(record)


def test_a_humaneval_run_has_one_category_and_one_turn(scripted, tmp_path):
    config = load_config(None, {"dataset.name": "humaneval", "dataset.limit": 3})
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    summary = outcome.summary
    assert summary.complete and summary.counted_questions == 3
    assert list(summary.categories) == ["humaneval"]
    assert summary.questions[0].turn2_acceptance_length is None
    assert summary.overall.turns["2"].n_questions == 0
    report = (outcome.run.path / "report.md").read_text()
    assert "| humaneval |" in report


def test_a_thinking_models_turns_are_split_at_their_reasoning(scripted, config, tmp_path):
    engines, options = scripted
    options["think"] = True
    outcome = runner.execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.records_path)
    for record in records:
        boundary = record.reasoning_tokens
        assert 0 < boundary < record.output_tokens
        decoded = engines[0].tokenizer.decode(record.token_ids[:boundary])
        assert decoded.endswith("</think>")
    segments = outcome.summary.segments.overall
    assert segments.split_turns == len(records) and segments.no_reasoning_turns == 0
    assert segments.segments["reasoning"].n_questions == 3
    report = (outcome.run.path / "report.md").read_text()
    assert "## Reasoning and answer apart" in report
    assert "| overall | reasoning |" in report and "| overall | answer |" in report

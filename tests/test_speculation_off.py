"""`--draft-len 0`: speculation off is a run like any other, the baseline of every speed
comparison. The reference engine decodes through the same batched loop without a drafter
(AL exactly 1.0, the same tokens as with speculation); launched servers start without
their speculation arguments; TensorRT-LLM gets no speculative config."""

from __future__ import annotations

from pathlib import Path

import pytest
from trtllm_standin import llmapi

from bench.config import LaunchConfig, load_config
from bench.engines.launch import build_command, extra_llm_api_options
from bench.engines.trtllm import llm_kwargs
from bench.errors import BenchError
from bench.records import TurnRecord
from bench.runner import execute
from bench.summary import summarize

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reference_engine_at_draft_len_0_is_greedy_decoding_with_al_exactly_one(tmp_path):
    overrides = {"dataset.question_ids": [81, 131], "sampling.max_tokens": 40}
    off = execute(load_config(None, {**overrides, "draft_len": 0}), out=tmp_path / "k0", quiet=True)
    on = execute(load_config(None, {**overrides, "draft_len": 3}), out=tmp_path / "k3", quiet=True)
    summary = off.summary
    assert summary.overall.acceptance_length == 1.0 and summary.valid
    assert summary.overall.histogram == [summary.overall.decode_steps]
    assert summary.overall.joint_acceptance == [] and summary.overall.draft_acceptance_rate is None
    assert not [s for s in summary.signals if s.severity == "error"]
    from bench.records import read_records

    tokens = {r.key: r.token_ids for r in read_records(off.run.path / "records.jsonl")}
    spec = {r.key: r for r in read_records(on.run.path / "records.jsonl")}
    assert tokens == {key: r.token_ids for key, r in spec.items()}  # lossless
    assert on.summary.overall.acceptance_length > 1.0
    assert off.run.read_manifest().engine.details["drafter"] == {"kind": "none"}


def test_summary_at_draft_len_0():
    records = [TurnRecord.of(81, "writing", t, 3, _generation([1] * 9)) for t in (1, 2)]
    summary = summarize(records, draft_len=0)
    assert summary.overall.acceptance_length == 1.0 and summary.valid
    assert {s.code for s in summary.signals} <= {"length_capped_turns"}


def _generation(steps):
    from bench.engines import Generation

    return Generation(
        steps=steps,
        token_ids=list(range(len(steps))),
        text="x",
        finish_reason="stop",
        duration_s=1.0,
    )


def test_launched_servers_start_without_their_speculation_arguments():
    config = load_config(REPO / "configs" / "llamacpp-smollm2-ngram.yaml")
    launch = config.engine.launch
    off = build_command(launch, config.engine.base_url, 0, None, {"{target_file}": "m.gguf"})
    on = build_command(launch, config.engine.base_url, 3, None, {"{target_file}": "m.gguf"})
    assert not any(a.startswith("--spec") for a in off)
    assert on[: len(off)] == off and "--spec-type" in on and on[-1] == "3"


def test_trtllm_serve_yaml_at_draft_len_0_has_no_speculative_config():
    config = load_config(REPO / "configs" / "kimi-k2-thinking-eagle3.yaml")
    options = extra_llm_api_options(config.engine.launch, 0)
    assert "speculative_config" not in options and options["stream_interval"] == 1


def test_a_command_that_carries_the_draft_len_cannot_run_speculation_off():
    launch = LaunchConfig(command=["server", "--draft", "{draft_len}"])
    build_command(launch, "http://127.0.0.1:8000", 3, None)
    with pytest.raises(BenchError, match="launch.speculative_args"):
        build_command(launch, "http://127.0.0.1:8000", 0, None)


def test_trtllm_in_process_at_draft_len_0_has_no_speculative_config():
    base = load_config(REPO / "configs" / "kimi-k2-thinking-eagle3-inprocess.yaml")
    off = llm_kwargs(base.model_copy(update={"draft_len": 0}), llmapi("1.2"))
    assert "speculative_config" not in off
    assert llm_kwargs(base, llmapi("1.2"))["speculative_config"].max_draft_len == 3

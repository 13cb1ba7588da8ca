"""The in-process `trtllm` engine's adapter, against a stand-in with the LLM API's shape."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from fake_server import chat_format, tokenizer_dir, write_config
from trtllm_standin import StandInLLM, llmapi

from bench.config import load_config
from bench.engines import DraftLenExceeded, SamplingParams
from bench.engines.trtllm import INSTALL, TrtllmEngine, llm_kwargs, preflight, speculative_config
from bench.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
ENGINE = {
    "kind": "trtllm",
    "speculative_model_dir": "/ckpt/eagle3",
    "tensor_parallel_size": 4,
    "max_batch_size": 32,
    "kv_cache_free_gpu_memory_fraction": 0.8,
}


@pytest.fixture
def config(write_config):
    return load_config(write_config(ENGINE))


def run(engine: TrtllmEngine, max_tokens: int = 32, draft_len: int = 3):
    return asyncio.run(engine.generate([1, 2, 3], SamplingParams(0.0, max_tokens, draft_len)))


def test_steps_are_the_token_growth_of_each_update(config, tokenizer_dir):
    chat = chat_format(tokenizer_dir)
    eos = chat.tokenizer.eos_token_id
    llm = StandInLLM([1, 4, 2, 1, 3], eos=eos)
    engine = TrtllmEngine(config, chat, llm=llm)
    generation = run(engine)
    assert generation.steps == [1, 4, 2, 1, 3] and generation.prefill_step
    assert generation.finish_reason == "stop" and generation.token_ids[-1] == eos
    counters = generation.engine_counters
    assert counters["decoding_iter"] == 5
    assert counters["avg_decoded_tokens_per_iter"] == pytest.approx(11 / 5)
    assert counters["iteration_stats"]["num_accepted_tokens"] == 6  # 3 + 1 + 0 + 2
    assert counters["cross_check"] == "ok", counters
    prompt, params = llm.requests[0]
    assert prompt == [1, 2, 3] and params.temperature == 0.0 and params.max_tokens == 32
    assert engine.info.version == "tensorrt_llm 1.2.0rc0 (stand-in)"


def test_decoding_iter_decides_and_disagreeing_updates_are_not_detail(config, tokenizer_dir):
    engine = TrtllmEngine(
        config, chat_format(tokenizer_dir), llm=StandInLLM([1, 2, 2], iter_offset=1)
    )
    generation = run(engine)
    assert generation.engine_counters["decoding_iter"] == 4
    assert (generation.output_tokens, generation.step_count) == (5, 4)  # the engine's count
    assert generation.step_detail == "disagrees" and not generation.has_step_detail
    assert "decoding_iter" in generation.totals.source


def test_stream_interval_above_one_merges_updates_but_totals_decide(config, tokenizer_dir):
    steps = [1, 4, 2, 1, 3, 4, 4, 2]  # 8 iterations, 21 tokens
    llm = StandInLLM(steps, stream_interval=3)  # updates after iterations 1, 3, 6, 8
    generation = run(TrtllmEngine(config, chat_format(tokenizer_dir), llm=llm))
    assert generation.steps == [1, 4 + 2, 1 + 3 + 4, 4 + 2]  # merged: more than k + 1 = 4
    assert (generation.output_tokens, generation.step_count) == (21, 8)
    assert generation.step_detail == "disagrees"


def test_an_update_above_draft_len_plus_one_invalidates_the_run(config, tokenizer_dir):
    engine = TrtllmEngine(config, chat_format(tokenizer_dir), llm=StandInLLM([1, 5]))
    with pytest.raises(DraftLenExceeded, match="more than draft_len \\+ 1 = 4"):
        run(engine)


@pytest.mark.parametrize(
    "release, cls, field",
    [
        ("1.1", "EagleDecodingConfig", "speculative_model_dir"),
        ("1.2", "Eagle3DecodingConfig", "speculative_model"),
    ],
)
def test_speculative_config_for_each_release(config, release, cls, field):
    spec = speculative_config(llmapi(release), config.engine, draft_len=5)
    assert type(spec).__name__ == cls
    assert spec.max_draft_len == 5 and spec.eagle3_one_model
    assert getattr(spec, field) == "/ckpt/eagle3"


def test_llm_arguments_from_the_config(config):
    kwargs = llm_kwargs(config, llmapi("1.2"))
    assert kwargs["model"] == "none/tiny" and kwargs["tensor_parallel_size"] == 4
    assert kwargs["max_batch_size"] == 32 and "max_seq_len" not in kwargs
    assert kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.8
    assert kwargs["speculative_config"].max_draft_len == 3


def test_without_tensorrt_llm_one_clear_sentence(config, tmp_path):
    with pytest.raises(BenchError) as err:
        preflight(config)
    assert str(err.value) == INSTALL
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--config",
            "configs/kimi-k2-thinking-eagle3-inprocess.yaml",
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.strip() == f"error: {INSTALL}"
    bare = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--engine", "trtllm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 2 and bare.stderr.strip() == f"error: {INSTALL}"


def test_merged_updates_become_a_summary_signal_and_leave_the_histogram(config, tokenizer_dir):
    from bench.records import TurnRecord
    from bench.summary import summarize

    llm = StandInLLM([1, 4, 2, 1, 3, 4, 4, 2], stream_interval=3)
    g = run(TrtllmEngine(config, chat_format(tokenizer_dir), llm=llm))
    records = [TurnRecord.of(81, "writing", turn, 3, g) for turn in (1, 2)]
    summary = summarize(records, draft_len=3)
    signals = {s.code: s for s in summary.signals}
    assert "step_detail_disagrees" in signals and "step_exceeds_draft_len" not in signals
    assert summary.questions[0].acceptance_length == pytest.approx(21 / 8)
    assert summary.overall.histogram == [0, 0, 0, 0] and summary.overall.step_detail_turns == 0

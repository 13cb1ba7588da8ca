"""The openai engine against a real speculative server: llama.cpp's llama-server, built
from its pinned PyPI sdist (scripts/build_llama_server.sh), serving the embedded SmolLM2
GGUF on the CPU.

llama-server streams one token per chunk whatever it accepted, so every turn's AL must
come from its per-request `timings` (steps = predicted_n - draft_n_accepted) and the run
must say it has no per-step detail. Three known answers: the run's per-question ALs equal
what the server's own counters give; self-speculation (the target drafts for itself)
accepts nearly every draft, AL near k + 1; synthetic acceptance (`--spec-synth-rates`)
accepts exactly the drafts its rates say.

The server is built once into the bench cache (about 7 minutes on 2 cores); without it
these tests skip, unless BENCH_REQUIRE_LLAMA_SERVER=1 (CI), which builds it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from fake_server import free_port

from bench.config import REPO_ROOT, load_config
from bench.conversation import ChatFormat, load_tokenizer
from bench.engines import SamplingParams
from bench.engines.launch import LaunchedServer
from bench.engines.openai_compat import OpenAIEngine, target_paths
from bench.records import read_records
from bench.runner import execute

pytestmark = pytest.mark.slow
NGRAM = REPO_ROOT / "configs" / "llamacpp-smollm2-ngram.yaml"
SELF = REPO_ROOT / "configs" / "llamacpp-smollm2-self.yaml"


@pytest.fixture(scope="module")
def llama_server() -> Path:
    script = REPO_ROOT / "scripts" / "build_llama_server.sh"
    required = os.environ.get("BENCH_REQUIRE_LLAMA_SERVER") == "1"
    from bench.artifacts import cache_dir

    binary = cache_dir() / "llama.cpp" / "11434.0.0" / "bin" / "llama-server"
    if not binary.exists() and not required:
        pytest.skip("llama-server is not built: scripts/build_llama_server.sh")
    built = subprocess.run([str(script)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    return Path(built.stdout.strip().splitlines()[-1])


def config_for(path: Path, tmp_path: Path, **overrides):
    values = {
        "engine.base_url": f"http://127.0.0.1:{free_port()}",
        "dataset.question_ids": [81, 111],
        "sampling.max_tokens": 48,
        **overrides,
    }
    return load_config(str(path), values)


def server_al(timings: list[dict]) -> float:
    """A question's card AL from the server's raw counters alone: tokens over steps, each
    step emitting one token plus its accepted drafts."""
    tokens = sum(t["predicted_n"] for t in timings)
    accepted = sum(t.get("draft_n_accepted", 0) for t in timings)
    return tokens / (tokens - accepted)


def test_ngram_run_has_the_servers_own_al_and_no_per_step_detail(llama_server, tmp_path):
    config = config_for(NGRAM, tmp_path)
    outcome = execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.path / "records.jsonl")
    assert len(records) == 4 and all(r.ok for r in records)
    assert all(r.step_detail == "none" and r.steps == [] for r in records)
    assert all("llama.cpp timings" in r.totals.source for r in records)
    by_question = {q.question_id: q for q in outcome.summary.questions}
    for qid in (81, 111):
        raw = [r.engine_counters["timings"] for r in records if r.question_id == qid]
        assert by_question[qid].acceptance_length == pytest.approx(server_al(raw), abs=1e-12)
    overall = outcome.summary.overall
    assert overall.step_detail_turns == 0 and sum(overall.histogram) == 0
    assert all(v is None for v in overall.joint_acceptance)  # unavailable, not 1.0
    assert "totals_only_turns" in {s.code for s in outcome.summary.signals}
    report = (outcome.run.path / "report.md").read_text()
    assert "per-step detail: none of the 4 turns" in report.lower()


def test_a_streamed_turn_equals_the_servers_plain_response(llama_server, tmp_path):
    """The same request without streaming: the server's own JSON, read by hand."""
    import httpx2

    config = config_for(NGRAM, tmp_path)
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    prompt = chat.prompt_ids([{"role": "user", "content": "Count from 1 to 30, one a line."}])
    engine = OpenAIEngine(config, chat)
    try:
        streamed = asyncio.run(engine.generate(prompt, SamplingParams(0.0, 64, 3)))
        body = {"prompt": prompt, "max_tokens": 64, "temperature": 0.0, "stream": False}
        raw = httpx2.post(f"{engine.base_url}/v1/completions", json=body, timeout=120).json()
    finally:
        asyncio.run(engine.aclose())
    timings = raw["timings"]
    assert streamed.text == raw["choices"][0]["text"]
    assert streamed.output_tokens == timings["predicted_n"] == raw["usage"]["completion_tokens"]
    assert streamed.step_count == timings["predicted_n"] - timings.get("draft_n_accepted", 0)
    assert streamed.totals.proposed_drafts == timings.get("draft_n", 0)


def test_self_speculation_accepts_nearly_every_draft(llama_server, tmp_path):
    outcome = execute(config_for(SELF, tmp_path), out=tmp_path / "run", quiet=True)
    overall = outcome.summary.overall
    assert 3.5 <= overall.acceptance_length <= 4.0 + 1e-9, overall.acceptance_length
    assert overall.proposed_draft_acceptance_rate > 0.95


def synthetic_steps(n: int, k: int, accepted_per_step: int) -> int:
    """Steps llama-server takes for n tokens when every step accepts `accepted_per_step`
    of its drafts: the prefill emits one token; later drafts are capped at the remaining
    budget minus one."""
    remaining, steps = n - 1, 1
    while remaining > 0:
        drafts = min(k, remaining - 1)
        remaining -= 1 + min(max(drafts, 0), accepted_per_step)
        steps += 1
    return steps


def test_synthetic_acceptance_is_measured_from_the_servers_counts(llama_server, tmp_path):
    """`--spec-synth-rates 1,1,0`: drafts 1 and 2 accepted, draft 3 never, so each step
    that drafts emits 3 tokens (1 + the rates' sum). llama-server never accepts a drafted
    end-of-generation token, so a step whose draft holds one accepts fewer: at most a few
    extra steps in 64 tokens."""
    config = config_for(SELF, tmp_path, **{"engine.extra_body": {"ignore_eos": True}})
    launch = config.engine.launch
    argv = [*launch.command, "--spec-synth-rates", "1,1,0"]
    synth = config.model_copy(
        update={
            "engine": config.engine.model_copy(
                update={"launch": launch.model_copy(update={"command": argv})}
            )
        }
    )
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    engine = OpenAIEngine(synth, chat)
    try:
        prompt = chat.prompt_ids(
            [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        )
        g = asyncio.run(engine.generate(prompt, SamplingParams(0.0, 64, 3)))
    finally:
        asyncio.run(engine.aclose())
    assert g.output_tokens == 64 and g.finish_reason == "length"
    decode_steps = g.step_count - 1
    assert g.totals.accepted_drafts <= 2 * decode_steps  # never the third draft
    ideal = synthetic_steps(64, 3, 2)  # 22 steps when no draft holds an end token
    assert ideal <= g.step_count <= ideal + 3, g.totals
    assert target_paths(config)["{target_file}"].endswith(".gguf")


def test_the_committed_eagle3_head_runs_on_the_reference_engines_float32_weights(
    llama_server, reference_eagle3_run, tmp_path
):
    """The embedded default's EAGLE-3 head through llama.cpp's own EAGLE-3 implementation
    (configs/llamacpp-smollm2-eagle3.yaml): the target as an F32 GGUF and the head in
    llama.cpp's format, both made by llama.cpp's own converter from the folders the
    reference engine loads. The answers are the reference engine's, and each turn took the
    reference engine's number of steps (within the bound at a stop token)."""
    config = config_for(
        REPO_ROOT / "configs" / "llamacpp-smollm2-eagle3.yaml",
        tmp_path,
        **{"dataset.question_ids": [81], "sampling.max_tokens": 64},
    )
    paths = target_paths(config)
    assert (
        paths["{target_gguf}"].endswith("-f32.gguf")
        and paths["{draft_head_gguf}"] != paths["{target_gguf}"]
    )
    served = execute(config, out=tmp_path / "llama", quiet=True)
    records = read_records(served.run.path / "records.jsonl")
    reference = {r.key: r for r in reference_eagle3_run}
    for r in records:
        assert r.ok and r.totals.proposed_drafts > 0
        assert r.text == reference[r.key].text, r.key
        expected = reference[r.key].step_count
        assert r.step_count <= expected <= r.step_count + r.step_slack, (r.key, r.counted)
    assert served.summary.overall.acceptance_length > 1.2  # a trained head, not a random one

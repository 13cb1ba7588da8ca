"""The `openai` engine: recorded streams of each server, and the real HTTP path against
`bench serve`'s app (over a scripted engine, so no model is loaded)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fake_server import (
    ScriptedEngine,
    ThreadedServer,
    chat_format,
    scripted_app,
    tokenizer_dir,
    write_config,
)

from bench.config import load_config
from bench.engines import DraftLenExceeded, SamplingParams, check_draft_len, reconcile
from bench.engines.openai_compat import (
    OpenAIEngine,
    StreamState,
    compare_engine_counters,
    prometheus_counters,
    sse_events,
)
from bench.errors import BenchError
from bench.records import read_records
from bench.runner import execute

STREAMS = Path(__file__).parent / "fixtures" / "streams"
COMPARED = (
    "question_id",
    "turn",
    "prompt_tokens",
    "steps",
    "prefill_step",
    "output_tokens",
    "token_ids",
    "text",
    "finish_reason",
    "error",
)


def replay(name: str, draft_len: int = 3) -> StreamState:
    async def lines():
        for line in (STREAMS / name).read_text().splitlines():
            yield line

    async def run() -> StreamState:
        state = StreamState(draft_len)
        async for chunk in sse_events(lines()):
            state.feed(chunk)
        return state

    return asyncio.run(run())


# --- recorded streams, one per server format -------------------------------------------


def test_trtllm_serve_stream_usage_and_token_ids_agree():
    state = replay("trtllm_completions.sse")
    assert state.steps == [1, 3, 4, 2] and state.source == "usage"
    assert state.token_ids[-1] == 163586 and state.finish_reason == "stop"
    counters = state.counters()
    assert counters["avg_decoded_tokens_per_iter"] == 2.5  # 10 tokens / 4 iterations
    assert counters["checks"] == {"token_ids_match_steps": True, "usage_total_matches_steps": True}
    totals = state.totals()  # steps = 10 tokens / 2.5 per iteration
    assert (totals.output_tokens, totals.steps, totals.accepted_drafts) == (10, 4, 6)
    assert reconcile(state.steps, totals, 3)[0] == "exact"


def test_vllm_stream_tokenless_chunk_is_not_a_step():
    state = replay("vllm_completions.sse")
    assert state.steps == [1, 3, 2, 1]  # the flush chunk with no tokens is skipped
    assert state.finish_reason == "length" and len(state.token_ids) == 7
    assert state.counters()["checks"]["usage_total_matches_steps"]
    assert state.totals() is None  # no per-request counts: the stream's steps stand unchecked
    assert reconcile(state.steps, state.totals(), 3)[0] == "unchecked"


def test_sglang_stream():
    state = replay("sglang_completions.sse")
    assert state.steps == [1, 2, 3] and state.token_ids[-1] == 128009
    assert state.text == ["The", " sky is", " blue."]


def test_trtllm_chat_stream_role_chunk_is_not_a_step():
    state = replay("trtllm_chat.sse")
    assert state.steps == [1, 3, 2] and "".join(state.text) == "Sure, here it is."
    assert reconcile(state.steps, state.totals(), 3)[0] == "exact"


def test_logprobs_are_the_fallback_count():
    state = replay("logprobs_only.sse")
    assert state.steps == [1, 2, 1] and state.source == "logprobs"


def test_step_above_draft_len_plus_one_invalidates_the_run():
    state = replay("trtllm_completions.sse", draft_len=2)  # a real step of 4 tokens
    detail, counted = reconcile(state.steps, state.totals(), 2)
    with pytest.raises(DraftLenExceeded, match="more than draft_len \\+ 1 = 3"):
        check_draft_len(state.steps, detail, counted, 10, 2)


def test_vllm_metrics_counters_and_comparison():
    text = (STREAMS / "vllm_metrics.prom").read_text()
    counters = prometheus_counters(text, "vllm:spec_decode")
    assert counters["vllm:spec_decode_num_drafts"] == 120
    assert counters["vllm:spec_decode_num_accepted_tokens_per_pos"] == 201  # summed positions
    # One turn: steps [1, 4, 2, 3] -> 3 decode steps, 1 + 3... accepted 3 + 1 + 2 = 6.
    delta = {"vllm:spec_decode_num_drafts": 3, "vllm:spec_decode_num_accepted_tokens": 6}
    assert all(compare_engine_counters("vllm", delta, [1, 4, 2, 3], 3).values())
    delta["vllm:spec_decode_num_drafts"] = 4  # more drafting steps than decode chunks
    checks = compare_engine_counters("vllm", delta, [1, 4, 2, 3], 3)
    assert not checks["vllm_drafting_steps_within_stream"]
    # n-gram drafts nothing where it finds no match: one-token steps need not have drafted,
    # so 2 drafting steps among [4, 1, 1, 3] agree with the stream.
    delta = {"vllm:spec_decode_num_drafts": 2, "vllm:spec_decode_num_accepted_tokens": 5}
    assert all(compare_engine_counters("vllm", delta, [1, 4, 1, 1, 3], 3).values())
    # Where the request reported its own counts, like is compared with like, exactly; both
    # count what the last step accepted past the cut.
    spec = {"num_spec_steps": 2, "num_accepted_draft_tokens": 7}
    delta = {"vllm:spec_decode_num_drafts": 2, "vllm:spec_decode_num_accepted_tokens": 7}
    checks = compare_engine_counters("vllm", delta, [1, 4, 1, 1, 2], 3, spec)
    assert checks == {
        "vllm_drafting_steps_match_request": True,
        "vllm_accepted_match_request": True,
    }
    delta["vllm:spec_decode_num_drafts"] = 3
    assert not compare_engine_counters("vllm", delta, [1, 4, 1, 1, 2], 3, spec)[
        "vllm_drafting_steps_match_request"
    ]


# --- the HTTP path against bench serve's app --------------------------------------------


@pytest.fixture
def scripted_server(tokenizer_dir):
    with ThreadedServer(scripted_app(tokenizer_dir, draft_len=3)) as server:
        yield server


def openai_config(write_config, url: str, **engine):
    return load_config(write_config({"kind": "openai", "base_url": url, **engine}))


def test_run_through_server_equals_reference_records(
    scripted_server,
    write_config,
    tokenizer_dir,
    tmp_path,
    monkeypatch,
):
    """The done criterion, on the scripted engine: same prompts, same records."""
    served = execute(
        openai_config(write_config, scripted_server.url), out=tmp_path / "oa", quiet=True
    )
    reference_config = load_config(write_config({"kind": "reference"}))
    engine = ScriptedEngine(chat_format(tokenizer_dir))
    monkeypatch.setattr("bench.runner.create_engine", lambda config, chat: engine)
    direct = execute(reference_config, out=tmp_path / "ref", quiet=True)
    a = read_records(served.run.records_path)
    b = read_records(direct.run.records_path)
    assert len(a) == len(b) == 8
    assert {r.finish_reason for r in a} == {"stop", "length"}
    for x, y in zip(a, b):
        assert {k: getattr(x, k) for k in COMPARED} == {k: getattr(y, k) for k in COMPARED}
        assert x.engine_counters["cross_check"] == "ok", x.engine_counters
        assert x.engine_counters["engine_metrics_delta"]["iterations"] == len(x.steps)


def test_concurrent_questions_through_the_server(tokenizer_dir, write_config, tmp_path):
    """--concurrency 3 over 4 questions: 3 turns at the server at once, never more (each
    step of the scripted engine takes 50 ms, so the turns overlap)."""
    app = scripted_app(tokenizer_dir, draft_len=3, delay_s=0.05)
    with ThreadedServer(app) as server:
        config = load_config(
            write_config({"kind": "openai", "base_url": server.url}), {"concurrency": 3}
        )
        records = read_records(execute(config, out=tmp_path / "c3", quiet=True).run.records_path)
    assert len(records) == 8 and all(r.ok for r in records)
    assert all("engine_metrics_delta" not in r.engine_counters for r in records)  # not attributable
    assert app.state.service.engine.max_in_flight == 3


def test_chat_api_sends_messages(scripted_server, write_config, tmp_path):
    config = openai_config(write_config, scripted_server.url, api="chat")
    outcome = execute(config, out=tmp_path / "chat", quiet=True)
    records = read_records(outcome.run.records_path)
    assert all(r.ok and r.steps[0] == 1 for r in records)
    assert all(r.engine_counters["step_source"] == "usage" for r in records)


def test_official_openai_client_reads_the_stream(scripted_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=scripted_server.url + "/v1", api_key="none")
    stream = client.completions.create(
        model="scripted",
        prompt=[3, 4, 5],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )
    chunks = list(stream)
    assert sum(len(c.choices[0].token_ids) for c in chunks if c.choices) == 8
    assert chunks[-1].usage.completion_tokens == 8


def test_metrics_endpoint_is_emptied_on_read(scripted_server):
    import httpx2

    httpx2.post(
        scripted_server.url + "/v1/completions",
        json={"prompt": [3, 4], "max_tokens": 5, "temperature": 0},
    )
    first = httpx2.get(scripted_server.url + "/metrics").json()
    assert len(first) >= 2 and "specDecodingStats" in first[0]
    assert httpx2.get(scripted_server.url + "/metrics").json() == []


def test_unknown_request_field_is_rejected(scripted_server):
    import httpx2

    answer = httpx2.post(scripted_server.url + "/v1/completions", json={"prompt": [3], "x": 1})
    assert answer.status_code == 400 and "x" in answer.json()["message"]


def test_unreachable_server_is_one_sentence(write_config):
    from fake_server import free_port

    config = openai_config(write_config, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BenchError, match="cannot reach the server"):
        OpenAIEngine(config, None)


def sampling(max_tokens: int = 10) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, draft_len=3)


def test_stream_counts_match_the_engine_step_for_step(scripted_server, write_config, tokenizer_dir):
    chat = chat_format(tokenizer_dir)
    engine = OpenAIEngine(openai_config(write_config, scripted_server.url), chat)
    assert engine.server == "bench" and engine.model == "scripted"
    prompt = [3, 4, 5, 6]
    generation = asyncio.run(engine.generate(prompt, sampling(10)))
    expected = ScriptedEngine(chat).generate_sync(prompt, sampling(10))
    assert generation.steps == expected.steps == [1, 2, 4, 1, 2]
    assert generation.token_ids == expected.token_ids and generation.text == expected.text
    assert json.dumps(generation.engine_counters)  # recordable


def test_sglang_native_generate_stream_and_spec_verify_ct():
    state = replay("sglang_generate.sse")
    assert state.steps == [1, 3, 2, 4] and state.finish_reason == "stop"
    assert "".join(state.text) == "The sky is blue. The sun is a"
    assert state.cumulative_ids[-1] == 128009 and len(state.cumulative_ids) == 10
    counters = state.counters()
    assert counters["spec_verify_ct"] == 3
    totals = state.totals()  # the first token is output without a verify pass
    assert (totals.output_tokens, totals.steps) == (10, 4)
    assert reconcile(state.steps, totals, 3)[0] == "exact"


@pytest.mark.parametrize(
    "api, server, path, expected",
    [
        ("completions", "trtllm", "/v1/completions", {"prompt": [1, 2], "detokenize": False}),
        ("completions", "vllm", "/v1/completions", {"prompt": [1, 2], "return_token_ids": True}),
        (
            "generate",
            "sglang",
            "/generate",
            {"input_ids": [1, 2], "sampling_params": {"temperature": 0.0, "max_new_tokens": 5}},
        ),
    ],
)
def test_request_body_per_server(api, server, path, expected):
    from types import SimpleNamespace

    from bench.config import OpenAIEngineConfig

    fake = SimpleNamespace(config=OpenAIEngineConfig(api=api), model="m", server=server)
    got_path, body = OpenAIEngine.request_body(fake, [1, 2], SamplingParams(0.0, 5, 3), None)
    assert got_path == path and expected.items() <= body.items() and body["stream"] is True
    if api == "completions":  # temperature always sent: trtllm-serve's default is 1.0
        assert body["temperature"] == 0.0 and body["stream_options"]["continuous_usage_stats"]

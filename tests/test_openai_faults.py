"""Faults of the server path, against a deliberately broken local server: each request
takes the next behaviour of a plan. Retries where a turn can be redone, a clear error
where it cannot, failed turns recorded (never averaged in) and picked up by --resume.

A "slow" response holds back its body until the test ends (an Event the test sets only at
teardown), so the client's read timeout fires however loaded the machine is."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fake_server import ThreadedServer, chat_format, tokenizer_dir, write_config

from bench.config import load_config
from bench.engines import SamplingParams
from bench.engines.openai_compat import OpenAIEngine, TurnFault
from bench.errors import BenchError
from bench.records import read_records
from bench.runner import execute

GOOD_STEPS = [[6], [7, 8], [9, 10, 11]]


def chunk(ids: list[int], total: int, finish: str | None) -> str:
    body = {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "broken",
        "choices": [{"index": 0, "text": "", "token_ids": ids, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": total, "total_tokens": 3 + total},
    }
    return f"data: {json.dumps(body)}\n\n"


def broken_app(plan: list[str], seen: list[str], release: threading.Event) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "broken", "owned_by": "test"}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: dict) -> Any:
        behaviour = plan.pop(0) if len(plan) > 1 else plan[0]
        seen.append(behaviour)
        if behaviour.isdigit():
            return JSONResponse(
                {"object": "error", "message": f"status {behaviour}"}, status_code=int(behaviour)
            )

        async def events():
            total = 0
            steps = {"exceed": [[6], [7, 8, 9, 10, 11]], "empty": []}.get(behaviour, GOOD_STEPS)
            while behaviour == "slow" and not release.is_set():  # until teardown
                await asyncio.sleep(0.05)
            for i, ids in enumerate(steps):
                if behaviour == "cut" and i == 2:
                    raise RuntimeError("connection dropped mid-turn")
                if behaviour == "malformed" and i == 1:
                    yield 'data: {"choices": [{"text": \n\n'
                total += len(ids)
                last = i == len(steps) - 1 and behaviour != "no_finish"
                yield chunk(ids, total, "length" if last else None)
            if behaviour == "empty":
                yield chunk([], 0, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def broken(tokenizer_dir):
    plan: list[str] = ["ok"]
    seen: list[str] = []
    release = threading.Event()
    with ThreadedServer(broken_app(plan, seen, release)) as server:
        server.plan, server.seen = plan, seen
        try:
            yield server
        finally:
            release.set()  # a held-back response ends, so the server can stop


def engine_for(server, write_config, tokenizer_dir, **extra) -> OpenAIEngine:
    engine = {
        "kind": "openai",
        "base_url": server.url,
        "backoff_s": 0.01,
        "read_timeout_s": 60.0,  # generous: only the held-back response should time out
        **extra,
    }
    return OpenAIEngine(load_config(write_config(engine)), chat_format(tokenizer_dir))


def generate(engine: OpenAIEngine):
    return asyncio.run(engine.generate([3, 4, 5], SamplingParams(0.0, 6, 3)))


@pytest.mark.parametrize(
    ("fault", "retried_because"),
    [
        ("503", "HTTP 503 from /v1/completions"),
        ("429", "HTTP 429 from /v1/completions"),
        ("cut", "connection failed or cut"),
        ("malformed", "malformed JSON in the stream"),
        ("slow", "timed out (ReadTimeout)"),
        ("no_finish", "the stream ended after 3 chunks without a finish"),
    ],
)
def test_retryable_fault_then_success(broken, write_config, tokenizer_dir, fault, retried_because):
    broken.plan[:] = [fault, "ok"]
    # A held-back response never comes, so any short timeout finds it; the others answer.
    timeout = {"read_timeout_s": 2.0} if fault == "slow" else {}
    generation = generate(engine_for(broken, write_config, tokenizer_dir, **timeout))
    assert generation.steps == [1, 2, 3]
    assert broken.seen == [fault, "ok"]
    [retried] = generation.engine_counters["retried"]
    assert retried.startswith("attempt 1: ") and retried_because in retried


def test_bounded_retries_then_failed_turn(broken, write_config, tokenizer_dir):
    broken.plan[:] = ["500"]
    with pytest.raises(TurnFault, match="gave up after 3 attempts"):
        generate(engine_for(broken, write_config, tokenizer_dir))
    assert broken.seen == ["500"] * 3


def test_zero_tokens_is_a_failed_turn_not_retried(broken, write_config, tokenizer_dir):
    broken.plan[:] = ["empty"]
    with pytest.raises(TurnFault, match="no tokens"):
        generate(engine_for(broken, write_config, tokenizer_dir))
    assert broken.seen == ["empty"]


def test_client_error_first_is_fatal_later_is_a_failed_turn(broken, write_config, tokenizer_dir):
    engine = engine_for(broken, write_config, tokenizer_dir)
    broken.plan[:] = ["400"]
    with pytest.raises(BenchError, match="rejected the request"):
        generate(engine)
    broken.plan[:] = ["ok", "400"]
    generate(engine)
    with pytest.raises(TurnFault, match="HTTP 400"):
        generate(engine)
    broken.plan[:] = ["404"]  # wrong path or model: fatal at any time
    with pytest.raises(BenchError, match="rejected the request \\(HTTP 404"):
        generate(engine)


def test_step_above_declared_draft_len_stops_the_run(broken, write_config, tmp_path):
    broken.plan[:] = ["exceed"]
    config = load_config(write_config({"kind": "openai", "base_url": broken.url}))
    with pytest.raises(BenchError, match="draft_len \\+ 1 = 4"):
        execute(config, out=tmp_path / "run", quiet=True)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed"


def test_failed_turn_is_recorded_and_resume_picks_it_up(broken, write_config, tmp_path):
    broken.plan[:] = ["500"]
    engine = {"kind": "openai", "base_url": broken.url, "backoff_s": 0.0}
    config = load_config(write_config(engine, dataset={"limit": 1}))
    first = execute(config, out=tmp_path / "run", quiet=True)
    assert not first.summary.complete and first.summary.overall is None
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert [(r.turn, r.finish_reason) for r in records] == [(1, "error")]
    assert "gave up after 3 attempts" in records[0].error
    broken.plan[:] = ["ok"]
    second = execute(None, resume=tmp_path / "run", quiet=True)
    assert second.summary.complete
    records = read_records(tmp_path / "run" / "records.jsonl")
    assert [(r.turn, r.ok) for r in records] == [(1, False), (1, True), (2, True)]


def test_server_gone_mid_run_fails_the_turn_after_retries(write_config, tokenizer_dir):
    from fake_server import scripted_app

    with ThreadedServer(scripted_app(tokenizer_dir, draft_len=3)) as server:
        engine = engine_for(server, write_config, tokenizer_dir)
        assert generate(engine).steps[0] == 1
    with pytest.raises(TurnFault, match="(?s)gave up after 3 attempts.*connection failed"):
        generate(engine)

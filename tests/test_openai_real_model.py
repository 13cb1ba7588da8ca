"""The done criterion with the real embedded model: `bench run --engine openai` against
`bench serve` records exactly what `--engine reference` records, step for step (same
prompts, greedy); only the timings differ."""

from __future__ import annotations

import pytest
from fake_server import ThreadedServer

from bench.config import load_config
from bench.records import read_records
from bench.runner import execute

COMPARED = (
    "question_id",
    "category",
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


@pytest.mark.slow
def test_openai_engine_against_bench_serve_equals_reference_engine(tmp_path, monkeypatch):
    from bench.serve import build_service
    from bench.serve_app import create_app

    service = build_service(None, draft_len=3)
    settings = {"dataset.limit": 2, "sampling.max_tokens": 24, "draft_len": 3}
    with ThreadedServer(create_app(service)) as server:
        served_config = load_config(
            None, {"engine.kind": "openai", "engine.base_url": server.url, **settings}
        )
        served = execute(served_config, out=tmp_path / "openai", quiet=True)
    # The reference run drives the very engine the server wrapped, in process.
    monkeypatch.setattr("bench.runner.create_engine", lambda config, chat: service.engine)
    direct = execute(load_config(None, settings), out=tmp_path / "reference", quiet=True)

    # The reference run batches its questions, so its records come in another order.
    a = sorted(read_records(served.run.records_path), key=lambda r: (r.question_id, r.turn))
    b = sorted(read_records(direct.run.records_path), key=lambda r: (r.question_id, r.turn))
    assert len(a) == len(b) == 4 and all(r.ok for r in a + b)
    for x, y in zip(a, b):
        assert {k: getattr(x, k) for k in COMPARED} == {k: getattr(y, k) for k in COMPARED}
        assert x.engine_counters["cross_check"] == "ok", x.engine_counters
    assert any(max(r.steps) > 1 for r in a)  # the drafter accepted something
    assert served.summary.overall.acceptance_length == direct.summary.overall.acceptance_length

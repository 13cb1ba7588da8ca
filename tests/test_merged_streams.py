"""Servers that merge decoding steps into one streamed chunk: the engine's own per-request
totals must give the turn's AL, and the merged chunks must be flagged, never counted as
steps (no histogram from them).

vLLM's output collector merges the outputs of several engine steps into one chunk when the
client reads slower than the engine produces, SGLang does the same, and trtllm-serve sends
one chunk per `stream_interval` iterations. The local server below streams a fixed
decoding (per-step token counts `STEPS`, draft length 3) merged in a fixed pattern, in each
server's own format, with the per-request counters each server reports.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fake_server import ThreadedServer, chat_format, tokenizer_dir, write_config

from bench.config import load_config
from bench.engines import DraftLenExceeded, SamplingParams
from bench.engines.openai_compat import OpenAIEngine
from bench.records import TurnRecord
from bench.summary import summarize

STEPS = [1, 4, 2, 1, 3, 4, 4, 2, 1, 3]  # prefill, then decode steps of 1 + accepted drafts
TOKENS, ACCEPTED = sum(STEPS), sum(e - 1 for e in STEPS[1:])  # 25 tokens, 15 accepted
MERGED = [[0], [1, 2], [3], [4, 5, 6], [7, 8], [9]]  # which steps share a chunk (vLLM lag)
SMALL_MERGES = [[0], [1], [2, 3], [4], [5], [6], [7], [8, 9]]  # every chunk <= k + 1 tokens
INTERVAL = 3  # trtllm-serve stream_interval: chunks after iterations 1, 3, 6, 9, and the end


def trtllm_groups(n: int, interval: int) -> list[list[int]]:
    """As TensorRT-LLM's executor: a response on the first iteration, every `interval`
    iterations, and at the end."""
    cuts = [i for i in range(n) if i == 0 or (i + 1) % interval == 0 or i == n - 1]
    groups, start = [], 0
    for cut in cuts:
        groups.append(list(range(start, cut + 1)))
        start = cut + 1
    return groups


def chunk_body(ids: list[int], total: int, finish: str | None, **choice: Any) -> dict:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "", "token_ids": ids, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 3, "completion_tokens": total, "total_tokens": 3 + total},
    }


def merging_app(server: str, groups: list[list[int]] | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    owner = {"vllm": "vllm", "vllm-plain": "vllm", "trtllm": "tensorrt_llm"}[server]

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "merging", "owned_by": owner}]}

    @app.post("/v1/completions")
    async def completions(body: dict) -> Any:
        chunks = groups or (trtllm_groups(len(STEPS), INTERVAL) if server == "trtllm" else MERGED)

        async def events():
            token, total = 100, 0
            for number, group in enumerate(chunks):
                n = sum(STEPS[i] for i in group)
                ids = list(range(token, token + n))
                token, total = token + n, total + n
                last = number == len(chunks) - 1
                extra = {}
                if server == "trtllm":  # the running average, iterations so far
                    extra["avg_decoded_tokens_per_iter"] = total / (group[-1] + 1)
                yield f"data: {json.dumps(chunk_body(ids, total, 'length' if last else None, **extra))}\n\n"
                await asyncio.sleep(0)
            if server == "vllm":  # --per-request-spec-decode-metrics summary
                spec = {
                    "num_spec_steps": len(STEPS) - 1,
                    "num_accepted_draft_tokens": ACCEPTED,
                    "num_draft_tokens": 3 * (len(STEPS) - 1),
                    "mean_acceptance_length": 1 + ACCEPTED / (len(STEPS) - 1),
                }
                final = {"object": "text_completion", "choices": [], "metrics": {}}
                final["metrics"]["speculative_decoding"] = spec
                final["usage"] = {"prompt_tokens": 3, "completion_tokens": total}
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def generate(server: str, write_config, tokenizer_dir, groups=None):
    with ThreadedServer(merging_app(server, groups)) as running:
        engine_config = {"kind": "openai", "base_url": running.url, "scrape_metrics": False}
        engine = OpenAIEngine(load_config(write_config(engine_config)), chat_format(tokenizer_dir))
        return asyncio.run(engine.generate([3, 4, 5], SamplingParams(0.0, 64, 3)))


@pytest.mark.parametrize("server", ["vllm", "trtllm"])
def test_merged_chunks_get_the_al_from_the_engine_totals(server, write_config, tokenizer_dir):
    g = generate(server, write_config, tokenizer_dir)
    assert len(g.steps) < len(STEPS) and max(g.steps) > 4  # really merged, above k + 1
    assert (g.output_tokens, g.step_count) == (TOKENS, len(STEPS))  # 25 tokens in 10 steps
    assert g.step_detail == "disagrees" and not g.has_step_detail
    assert g.totals.accepted_drafts == ACCEPTED

    records = [TurnRecord.of(81, "writing", turn, 3, g) for turn in (1, 2)]
    summary = summarize(records, draft_len=3)
    assert summary.questions[0].acceptance_length == pytest.approx(TOKENS / len(STEPS))
    assert summary.overall.step_detail_turns == 0 and sum(summary.overall.histogram) == 0
    codes = {s.code for s in summary.signals}
    assert "step_detail_disagrees" in codes and "step_exceeds_draft_len" not in codes
    assert summary.valid


def test_merged_chunks_without_totals_stay_unchecked(write_config, tokenizer_dir):
    """vLLM without `--per-request-spec-decode-metrics`: nothing tells a merged chunk of
    at most k + 1 tokens from a real step. The record says its steps are unchecked."""
    g = generate("vllm-plain", write_config, tokenizer_dir, SMALL_MERGES)
    assert g.totals is None and g.step_detail == "unchecked"
    assert g.step_count == len(SMALL_MERGES)  # what the stream showed: 8 "steps"


def test_a_merged_chunk_above_k_plus_one_without_totals_stops_the_run(write_config, tokenizer_dir):
    with pytest.raises(DraftLenExceeded, match="no per-request totals"):
        generate("vllm-plain", write_config, tokenizer_dir)

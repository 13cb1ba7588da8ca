"""`bench serve` with the real embedded model batches concurrent requests: each answer is
the one it gets alone (greedy, token for token), `/metrics` shows forwards that held
several requests, and a client that goes away mid-stream frees its row without disturbing
the others."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fake_server import ThreadedServer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Three colours of the rainbow:"]


async def stream(
    client: Any, url: str, prompt: str, max_tokens: int, leave_after: int | None = None
) -> tuple[str, list[int], int]:
    """(text, token ids, chunks) of one streamed completion; with `leave_after`, the client
    closes the connection after that many chunks."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "return_token_ids": True,
    }
    text, ids, chunks = "", [], 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data:") :])["choices"][0]
            text += choice["text"]
            ids += choice["token_ids"]
            chunks += 1
            if chunks == leave_after:
                break
    return text, ids, chunks


@pytest.mark.slow
def test_concurrent_requests_share_forwards_and_match_alone():
    import httpx2
    import torch

    from bench.serve import build_service
    from bench.serve_app import create_app

    service = build_service(None, draft_len=3)
    torch.set_num_threads(1)  # a shared machine: the test needs no speed
    decoder = service.engine.decoder

    async def scenario(url: str) -> tuple[list, list]:
        async with httpx2.AsyncClient(timeout=60) as client:
            alone = [await stream(client, url, p, 20) for p in PROMPTS]
            await client.get(f"{url}/metrics")  # empties it
            leaving = stream(client, url, "Once upon a time", 200, leave_after=2)
            together = await asyncio.gather(leaving, *(stream(client, url, p, 20) for p in PROMPTS))
        return alone, together

    with ThreadedServer(create_app(service)) as server:
        alone, (left, *together) = asyncio.run(scenario(server.url))
        deadline = time.monotonic() + 120  # a loaded machine may take its time; idle is all we ask
        while decoder.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = not decoder.busy

        iterations = httpx2.get(f"{server.url}/metrics").json()

    assert together == alone
    assert all(len(ids) == 20 for _, ids, _ in alone)
    assert left[2] == 2 and idle  # the 200-token turn left with its client
    assert max(entry["numActiveRequests"] for entry in iterations) > 1
    decode = [e for e in iterations if e["inflightBatchingStats"]["numGenRequests"]]
    assert any(e["specDecodingStats"]["numAcceptedTokens"] for e in decode)
    prefill = [e for e in iterations if e["inflightBatchingStats"]["numContextRequests"]]
    assert prefill and all(e["specDecodingStats"]["numDraftTokens"] == 0 for e in prefill)

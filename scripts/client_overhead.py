#!/usr/bin/env python
"""Client overhead of the `openai` engine: chunks per second it processes from a local
server, against the bare `openai` client (AsyncOpenAI) reading the same stream.

A child process serves one pre-rendered stream in trtllm-serve's format (token ids,
continuous usage, avg_decoded_tokens_per_iter; steps of 1-4 tokens) as fast as the
loopback allows, so what is measured is the client: SSE parsing, JSON decoding and, for
the engine, its per-step accounting and checks. Not a test; prints one line per client.

    python scripts/client_overhead.py [--chunks 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PATTERN = [1, 4, 2, 3]


def stream_body(chunks: int) -> bytes:
    out, total = [], 0
    head = {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": "m"}
    for i in range(chunks):
        n = 1 if i == 0 else PATTERN[i % len(PATTERN)]
        ids = list(range(1000 + total, 1000 + total + n))
        total += n
        choice = {
            "index": 0,
            "text": "",
            "token_ids": ids,
            "logprobs": None,
            "finish_reason": "length" if i == chunks - 1 else None,
            "stop_reason": None,
            "avg_decoded_tokens_per_iter": total / (i + 1),
        }
        usage = {"prompt_tokens": 3, "completion_tokens": total, "total_tokens": 3 + total}
        out.append(f"data: {json.dumps({**head, 'choices': [choice], 'usage': usage})}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def serve(port: int, chunks: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    body = stream_body(chunks)
    parts = body.split(b"\n\n")
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "m", "owned_by": "generic"}]}

    @app.post("/v1/completions")
    async def completions(request: dict) -> StreamingResponse:
        async def events():
            for part in parts:
                if part:
                    yield part + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class _Chat:
    """The little of ChatFormat the engine touches at the end of a turn."""

    tokenizer = type("T", (), {"all_special_ids": []})()
    stop_token_ids: set[int] = set()

    def decode(self, ids: list[int]) -> str:
        return ""


async def bare_openai(url: str, chunks: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    start = time.perf_counter()
    stream = await client.completions.create(
        model="m", prompt=[1, 2, 3], max_tokens=10**6, temperature=0, stream=True
    )
    seen = 0
    async for _chunk in stream:
        seen += 1
    elapsed = time.perf_counter() - start
    await client.close()
    assert seen == chunks, seen
    return seen / elapsed


async def bench_engine(url: str, chunks: int) -> float:
    from bench.config import load_config
    from bench.engines import SamplingParams
    from bench.engines.openai_compat import OpenAIEngine

    config = load_config(
        None, {"engine.kind": "openai", "engine.base_url": url, "engine.scrape_metrics": False}
    )
    engine = OpenAIEngine(config, _Chat())
    start = time.perf_counter()
    generation = await engine.generate([1, 2, 3], SamplingParams(0.0, 10**6, 3))
    elapsed = time.perf_counter() - start
    assert len(generation.steps) == chunks
    return chunks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.chunks)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--chunks", str(args.chunks)]
    )
    try:
        import httpx2

        for _ in range(200):
            try:
                httpx2.get(url + "/v1/models", timeout=1)
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        results: dict[str, list[float]] = {
            "openai client (AsyncOpenAI)": [],
            "bench openai engine": [],
        }
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            results["openai client (AsyncOpenAI)"].append(
                asyncio.run(bare_openai(url, args.chunks))
            )
            results["bench openai engine"].append(asyncio.run(bench_engine(url, args.chunks)))
        print(f"{args.chunks} chunks per stream, {args.repeats} streams each, median chunks/s:")
        for name, rates in results.items():
            print(
                f"  {name:30s} {statistics.median(rates):9.0f}  (min {min(rates):.0f}, max {max(rates):.0f})"
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

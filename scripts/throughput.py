"""Tokens per second of the reference engine, one row and batched, against plain greedy
`generate()`, and (with --full-run) the wall time and peak memory of the full default run.

Same model, same prompts (turn 1 of a stratified MT-Bench subset), same max_new_tokens.
Plain `generate()` and the engine at batch 1 are interleaved prompt by prompt so that
machine noise hits both alike; the batch of B then decodes all prompts together
(continuous batching: a finished turn leaves, nothing else joins). Ratios are measured in
this one run. The outputs are compared token for token with plain greedy decoding.

    .venv/bin/python scripts/throughput.py --limit 16 --max-tokens 256 --full-run

`--sweep 8,16,32` instead times the batched engine alone at each batch size, all prompts
submitted at once (use a --limit of a few times the largest size), to choose the default.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.config import DatasetConfig, load_config
from bench.conversation import ChatFormat, load_tokenizer, turn_messages
from bench.dataset import load_questions
from bench.engines import SamplingParams
from bench.engines.reference import ReferenceEngine
from bench.engines.speculative import SpeculativeDecoder


def full_run(args: argparse.Namespace) -> None:
    """`bench run --draft-len 3` on everything, in a child process: wall and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--draft-len",
            str(args.draft_len),
            "--quiet",
            "--out",
            str(out),
        ]
        if args.config:
            command += ["--config", args.config]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        print(f"\nfull default run: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n")
            raise SystemExit(f"the full run failed (exit {done.returncode})")
        print(done.stdout.strip())
        summary = json.loads((out / "summary.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        details = manifest["engine"]["details"]
        print(
            f"full run: {wall / 60:.1f} min wall, peak RSS {peak_mb / 1024:.2f} GB, "
            f"batch {details.get('batch_size')}, {details.get('threads')} threads, "
            f"{summary['counted_questions']} questions"
        )


def decode_together(decoder: SpeculativeDecoder, prompts: list[list[int]], sampling):
    """Submit every prompt at once and step until all are done: (rows, seconds, steps)."""
    start = time.perf_counter()
    rows = [decoder.submit(prompt, sampling) for prompt in prompts]
    steps = 0
    while decoder.busy:
        decoder.step()
        steps += 1
    return rows, time.perf_counter() - start, steps


def sweep(engine: ReferenceEngine, config, prompts: list[list[int]], sampling, sizes) -> None:
    """Tokens/s of the batched engine at each batch size on the same prompts."""
    from bench.engines.drafters import build_drafter

    device = engine.info.details["device"]
    print(f"{'batch':>5} {'tokens':>6} {'seconds':>7} {'tok/s':>6} {'steps':>5}")
    for size in sizes:
        drafter, _ = build_drafter(
            config.engine.drafter, engine.model, engine.chat_format.tokenizer, device, size
        )
        decoder = SpeculativeDecoder(engine.model, drafter, engine.decoder.stop_token_ids, size)
        rows, elapsed, steps = decode_together(decoder, prompts, sampling)
        tokens = sum(len(row.out) for row in rows)
        print(
            f"{size:>5} {tokens:>6} {elapsed:>7.1f} {tokens / elapsed:>6.1f} {steps:>5}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--limit", type=int, default=16, help="questions (turn 1 of each)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--draft-len", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's")
    parser.add_argument("--full-run", action="store_true", help="also time `bench run`")
    parser.add_argument("--out", type=Path, help="keep the full run's directory here")
    parser.add_argument("--sweep", help="comma-separated batch sizes to time (only that)")
    args = parser.parse_args()

    overrides = {"draft_len": args.draft_len, "engine.batch_size": args.batch_size}
    config = load_config(args.config, overrides)
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    engine = ReferenceEngine(config, chat)
    batched = engine.decoder
    one_row = SpeculativeDecoder(engine.model, batched.drafter, batched.stop_token_ids, 1)
    _, questions = load_questions(DatasetConfig(limit=args.limit))
    prompts = [chat.prompt_ids(turn_messages(q, 1, config.conversation)) for q in questions]
    sampling = SamplingParams(0.0, args.max_tokens, args.draft_len)
    if args.sweep:
        sizes = [int(size) for size in args.sweep.split(",")]
        print(
            f"{config.target.name}, threads={torch.get_num_threads()}, "
            f"{len(prompts)} turns, max_tokens={args.max_tokens}, k={args.draft_len}"
        )
        sweep(engine, config, prompts, sampling, sizes)
        return
    print(
        f"{config.target.name}, {engine.info.details['dtype']}, "
        f"threads={torch.get_num_threads()}, {len(prompts)} prompts, "
        f"max_tokens={args.max_tokens}, k={args.draft_len}, batch={batched.batch_size}"
    )
    print(
        f"{'question':>8} {'category':<11} {'tokens':>6} {'plain tok/s':>11} "
        f"{'batch-1 tok/s':>13} {'AL':>5} same"
    )

    plain_s = one_s = 0.0
    plain_out, one_out = [], []
    for q, prompt in zip(questions, prompts):
        start = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(
                torch.tensor([prompt]), max_new_tokens=args.max_tokens, do_sample=False
            )
        elapsed_plain = time.perf_counter() - start
        plain = out[0, len(prompt) :].tolist()
        start = time.perf_counter()
        turn = one_row.run_alone(prompt, sampling)
        tokens, steps = turn.out, turn.steps
        elapsed_one = time.perf_counter() - start
        # Plain generate() runs on past a stop token only if the engine did not stop there.
        plain_s += elapsed_plain * len(tokens) / len(plain)
        one_s += elapsed_one
        plain_out.append(plain)
        one_out.append(tokens)
        print(
            f"{q.question_id:>8} {q.category:<11} {len(tokens):>6} "
            f"{len(plain) / elapsed_plain:>11.1f} {len(tokens) / elapsed_one:>13.1f} "
            f"{len(tokens) / len(steps):>5.2f} {plain[: len(tokens)] == tokens}",
            flush=True,
        )

    rows, batch_s, forwards = decode_together(batched, prompts, sampling)

    tokens = sum(len(t) for t in one_out)
    batch_tokens = sum(len(row.out) for row in rows)
    plain_rate, one_rate, batch_rate = tokens / plain_s, tokens / one_s, batch_tokens / batch_s
    same_one = sum(p[: len(t)] == t for p, t in zip(plain_out, one_out))
    same_batch = sum(row.out == t for row, t in zip(rows, one_out))
    print(
        f"\nplain generate(): {plain_rate:.1f} tok/s\n"
        f"reference engine, batch 1: {one_rate:.1f} tok/s "
        f"({one_rate / plain_rate:.2f}x plain); outputs equal to plain: "
        f"{same_one}/{len(prompts)}\n"
        f"reference engine, batch {batched.batch_size}: {batch_rate:.1f} tok/s "
        f"({batch_rate / plain_rate:.2f}x plain, {batch_rate / one_rate:.2f}x batch 1; "
        f"{batch_tokens} tokens in {batch_s:.1f} s, {forwards} steps); outputs equal to "
        f"batch 1: {same_batch}/{len(prompts)}",
        flush=True,
    )
    del engine, batched, one_row
    if args.full_run:
        full_run(args)


if __name__ == "__main__":
    main()

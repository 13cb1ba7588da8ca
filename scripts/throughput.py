"""Tokens per second of the reference engine against plain greedy `generate()`.

Same model, same prompts (turn 1 of a stratified MT-Bench subset), same max_new_tokens,
the two methods interleaved prompt by prompt so that machine noise hits both alike. Prints
per-prompt and total figures and their ratio, and checks the outputs are identical.

    .venv/bin/python scripts/throughput.py --limit 8 --max-tokens 256
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.config import DatasetConfig, load_config
from bench.conversation import ChatFormat, load_tokenizer, turn_messages
from bench.dataset import load_questions
from bench.engines import SamplingParams
from bench.engines.reference import ReferenceEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--draft-len", type=int, default=3)
    args = parser.parse_args()

    config = load_config(args.config, {"draft_len": args.draft_len})
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    engine = ReferenceEngine(config, chat)
    _, questions = load_questions(DatasetConfig(limit=args.limit))
    sampling = SamplingParams(0.0, args.max_tokens, args.draft_len)
    print(f"threads={torch.get_num_threads()} max_tokens={args.max_tokens} k={args.draft_len}")
    print(
        f"{'question':>8} {'category':<11} {'tokens':>6} {'plain tok/s':>11} {'spec tok/s':>10} {'AL':>5} same"
    )
    totals = {"plain_s": 0.0, "spec_s": 0.0, "tokens": 0}
    for q in questions:
        prompt = chat.prompt_ids(turn_messages(q, 1, config.conversation))
        start = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(
                torch.tensor([prompt]), max_new_tokens=args.max_tokens, do_sample=False
            )
        plain_s = time.perf_counter() - start
        plain = out[0, len(prompt) :].tolist()
        start = time.perf_counter()
        spec = engine.generate_sync(prompt, sampling)
        spec_s = time.perf_counter() - start
        n = len(spec.token_ids)
        totals["plain_s"] += plain_s * n / len(plain)  # per token, if lengths ever differ
        totals["spec_s"] += spec_s
        totals["tokens"] += n
        print(
            f"{q.question_id:>8} {q.category:<11} {n:>6} {len(plain) / plain_s:>11.1f} "
            f"{n / spec_s:>10.1f} {n / len(spec.steps):>5.2f} {plain == spec.token_ids}"
        )
    plain_rate = totals["tokens"] / totals["plain_s"]
    spec_rate = totals["tokens"] / totals["spec_s"]
    print(
        f"total: {totals['tokens']} tokens; plain generate() {plain_rate:.1f} tok/s, "
        f"reference engine {spec_rate:.1f} tok/s, ratio {spec_rate / plain_rate:.2f}"
    )


if __name__ == "__main__":
    main()

"""Stage 2: the target's own answers to the training prompts, greedy.

EAGLE-3 learns to predict the target, so its training text is what the target itself
writes, not ShareGPT's answers (and those are not ours to use). Decoding goes through the
reference engine's batched speculative decoder (continuous batching, `batch_size` prompts
in flight, the config's drafter): at temperature 0 it emits the target's greedy tokens,
whatever the drafter proposes. Batched products round differently from one-row ones, which
can flip a near-tie between two tokens; the answers are then still the target's greedy
answers under that rounding.

Output: `responses.jsonl`, one row {id, prompt_ids, response_ids, finish_reason} appended per
finished prompt (response_ids end with the stop token when the answer ended by itself);
`responses.json` holds the settings, and a rerun with other settings is refused rather than
mixed in. A restart skips every id already written, so an interrupted run loses only the
answers that were in flight.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.eagle3_train import read_jsonl
from bench.errors import BenchError
from bench.records import RecordWriter
from bench.rundir import git_state, now_iso, write_text_atomic


def done_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_jsonl(path)}


def generation_settings(config: Any, max_tokens: int, batch_size: int) -> dict[str, Any]:
    """What decides the answers (the resume check compares these)."""
    drafter = config.engine.drafter.model_dump() if config.draft_len else {"kind": "none"}
    return {
        "target": config.target.model_dump(),
        "conversation": config.conversation.model_dump(),
        "sampling": "greedy (temperature 0)",
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "draft_len": config.draft_len,
        "drafter": drafter,
    }


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record the settings on the first run; refuse a resume with different ones."""
    path = folder / "responses.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))["settings"]
        if before != settings:
            changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
            raise BenchError(
                f"{folder / 'responses.jsonl'} was generated with other settings "
                f"({', '.join(changed)} differ); use another --dir or the same settings"
            )
        return
    meta = {"settings": settings, "started": now_iso(), "git": git_state()}
    write_text_atomic(path, json.dumps(meta, indent=2) + "\n")


def generate(
    config: Any,
    folder: Path,
    limit: int | None,
    max_tokens: int,
    batch_size: int,
    threads: int | None = None,
    log_every_s: float = 60.0,
) -> dict[str, Any]:
    """Answer the first `limit` prompts of prompts.jsonl (all: None) not answered yet."""
    from tqdm import tqdm

    from bench.conversation import ChatFormat, load_tokenizer
    from bench.engines import SamplingParams
    from bench.engines.reference import ReferenceEngine

    prompts = list(read_jsonl(folder / "prompts.jsonl"))
    if not prompts:
        raise BenchError(f"{folder / 'prompts.jsonl'} is missing or empty: run the prompts stage")
    wanted = prompts[:limit] if limit is not None else prompts
    out = folder / "responses.jsonl"
    done = done_ids(out)
    todo = [row for row in wanted if row["id"] not in done]
    check_settings(folder, generation_settings(config, max_tokens, batch_size))
    print(
        f"generate: {len(wanted) - len(todo)} of {len(wanted)} prompts already answered, "
        f"{len(todo)} to go -> {out}",
        file=sys.stderr,
        flush=True,
    )
    if not todo:
        return {"answered": 0, "tokens": 0, "seconds": 0.0}
    config = config.model_copy(
        update={
            "engine": config.engine.model_copy(
                update={"batch_size": batch_size, "threads": threads or config.engine.threads}
            )
        }
    )
    engine = ReferenceEngine(config, ChatFormat(load_tokenizer(config.target), config.conversation))
    decoder = engine.decoder
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, draft_len=config.draft_len)
    ids: dict[Any, str] = {}  # turn in flight -> sample id
    queue = iter(todo)
    answered = tokens = 0
    start = last_log = time.perf_counter()
    bar = tqdm(total=len(todo), unit="answer", desc="generate")
    with RecordWriter(out) as writer:
        while True:
            # Keep one batch waiting behind the running one, so a freed slot refills at once.
            while len(decoder.waiting) + len(decoder.running) < 2 * batch_size:
                prompt = next(queue, None)
                if prompt is None:
                    break
                ids[decoder.submit(prompt["prompt_ids"], sampling)] = prompt["id"]
            if not decoder.busy:
                break
            for row in decoder.step().finished:
                if row.error is not None:
                    raise row.error
                result = engine.generation(row)
                writer.append(
                    {
                        "id": ids.pop(row),
                        "prompt_ids": row.prompt,
                        "response_ids": result.token_ids,
                        "finish_reason": result.finish_reason,
                    }
                )
                answered += 1
                tokens += len(result.token_ids)
                bar.update(1)
            now = time.perf_counter()
            if now - last_log >= log_every_s:
                last_log = now
                elapsed = now - start
                print(
                    f"generate: {answered}/{len(todo)} answered, {tokens} tokens, "
                    f"{tokens / elapsed:.1f} tokens/s, {answered * 3600 / elapsed:.0f} answers/h",
                    file=sys.stderr,
                    flush=True,
                )
    bar.close()
    return {"answered": answered, "tokens": tokens, "seconds": time.perf_counter() - start}

"""Test doubles for the server path, with no model: a word-level tokenizer with a chat
template, a scripted engine with the reference engine's `generate` shape, and helpers
that serve them through `bench serve`'s real app (in a thread, or as a child process when
run as a script: `python tests/fake_server.py --port P --draft-len K`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import ConversationConfig  # noqa: E402
from bench.conversation import ChatFormat  # noqa: E402
from bench.engines import EngineInfo, SamplingParams  # noqa: E402
from bench.engines.reference import IterationStats  # noqa: E402
from bench.records import Generation  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
EOS = "<|im_end|>"
TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def make_tokenizer(folder: Path) -> Path:
    """A tiny fast tokenizer saved in `folder` (AutoTokenizer loads it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    roles = ["user", "assistant", "system"]
    vocab = {tok: i for i, tok in enumerate(["<unk>", EOS, "<|im_start|>", *roles, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token=EOS,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def chat_format(folder: Path) -> ChatFormat:
    from transformers import AutoTokenizer

    return ChatFormat(AutoTokenizer.from_pretrained(folder), ConversationConfig())


class ScriptedEngine:
    """Deterministic output from the prompt: the words cycle, the steps follow `pattern`
    (capped at k + 1 and at max_tokens), and prompts of odd length stop with EOS after
    `stop_after` tokens. Shaped like `ReferenceEngine.generate`; each step of each turn is
    one iteration of its own for `on_iteration` (the scripted engine does not batch), and
    `max_in_flight` is the most turns it was ever asked for at once."""

    info = EngineInfo(name="scripted", version="test")

    def __init__(self, chat: ChatFormat, pattern=(2, 4, 1, 3), stop_after=9, delay_s=0.0):
        self.chat = chat
        self.pattern = pattern
        self.stop_after = stop_after
        self.delay_s = delay_s
        self.eos = chat.tokenizer.convert_tokens_to_ids(EOS)
        self.first_word = chat.tokenizer.convert_tokens_to_ids(WORDS[0])
        self.on_iteration: Any = None
        self.in_flight = 0
        self.max_in_flight = 0

    def script(self, prompt_ids: list[int], sampling: SamplingParams) -> Iterator[list[int]]:
        """Each step's new tokens."""
        stops = len(prompt_ids) % 2 == 1
        seed = sum(prompt_ids)
        tokens: list[int] = []
        steps = 0
        while True:
            want = (
                1
                if not steps
                else min(self.pattern[(steps - 1) % len(self.pattern)], sampling.draft_len + 1)
            )
            new = []
            for _ in range(want):
                if len(tokens) + len(new) >= sampling.max_tokens:
                    break
                if stops and len(tokens) + len(new) == self.stop_after:
                    new.append(self.eos)
                    break
                new.append(self.first_word + (seed + len(tokens) + len(new)) % len(WORDS))
            tokens.extend(new)
            steps += 1
            yield new
            if tokens[-1] == self.eos or len(tokens) >= sampling.max_tokens:
                return

    def generation(self, steps: list[list[int]], draft_len: int, start: float) -> Generation:
        tokens = [t for new in steps for t in new]
        stopped = tokens[-1] == self.eos
        return Generation(
            steps=[len(new) for new in steps],
            drafted=[0] + [draft_len] * (len(steps) - 1),
            token_ids=tokens,
            text=self.chat.decode(tokens[:-1] if stopped else tokens),
            finish_reason="stop" if stopped else "length",
            ttft_s=0.0,
            duration_s=time.perf_counter() - start,
        )

    def generate_sync(
        self, prompt_ids: list[int], sampling: SamplingParams, on_step: Any = None
    ) -> Generation:
        start, steps = time.perf_counter(), []
        for new in self.script(prompt_ids, sampling):
            steps.append(new)
            if self.delay_s:
                time.sleep(self.delay_s)
            if on_step:
                on_step(new)
        return self.generation(steps, sampling.draft_len, start)

    async def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        messages: Any = None,
        on_step: Any = None,
    ) -> Generation:
        start, steps = time.perf_counter(), []
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for new in self.script(prompt_ids, sampling):
                steps.append(new)
                await asyncio.sleep(self.delay_s)  # other turns run in between
                if self.on_iteration is not None:
                    first = len(steps) == 1
                    k = 0 if first else sampling.draft_len
                    self.on_iteration(
                        IterationStats(
                            1, first, k, 0 if first else len(new) - 1, int(k > 0), len(new)
                        )
                    )
                if on_step:
                    on_step(new)
        finally:
            self.in_flight -= 1
        return self.generation(steps, sampling.draft_len, start)

    async def aclose(self):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """Any ASGI app served by uvicorn in a daemon thread on a free local port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def scripted_app(folder: Path, draft_len: int, **engine_kwargs: Any) -> Any:
    from bench.serve import Service
    from bench.serve_app import create_app

    chat = chat_format(folder)
    engine = ScriptedEngine(chat, **engine_kwargs)
    service = Service(engine, chat, "scripted", draft_len, {engine.eos})
    engine.on_iteration = service.record_iteration
    return create_app(service)


# pytest fixtures, imported by the test modules that use them.
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def write_config(tmp_path: Path, tokenizer_dir: Path):
    """Writes a config with the tiny tokenizer as target and the given engine section."""

    def write(engine: dict, name: str = "cfg.yaml", **top: Any) -> Path:
        data = {
            "name": "tiny",
            "target": {"name": "tiny", "hf_id": "none/tiny", "tokenizer": str(tokenizer_dir)},
            "engine": engine,
            "draft_len": 3,
            "sampling": {"temperature": 0.0, "max_tokens": 12},
            "dataset": {"limit": 4},
            **top,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


if __name__ == "__main__":  # a launchable server for the launch tests
    import tempfile

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--draft-len", type=int, required=True)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per step")
    parser.add_argument("--pid-file", type=Path, help="write this process's id here")
    args = parser.parse_args()
    if args.pid_file:
        args.pid_file.write_text(str(os.getpid()))
    folder = args.tokenizer or make_tokenizer(Path(tempfile.mkdtemp()))
    print(f"fake server on {args.port}, draft length {args.draft_len}", flush=True)
    app = scripted_app(folder, args.draft_len, delay_s=args.delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")

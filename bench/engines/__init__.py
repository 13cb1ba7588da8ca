"""Engines: the only stage that knows an inference engine exists.

An engine takes prompt token ids and sampling settings and returns a `Generation` whose
`steps` hold, per decoding iteration, how many tokens it emitted. Heavy SDKs (torch,
tensorrt_llm, …) are imported inside the engine module that needs them, so the registry
below names modules, not classes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.config import RunConfig
    from bench.conversation import ChatFormat
    from bench.records import Generation


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    max_tokens: int
    draft_len: int
    seed: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What the manifest records about the engine."""

    name: str
    version: str
    details: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """An engine. One that sets `takes_messages = True` also gets the turn's chat messages
    as `messages=` (for servers that apply their own chat template)."""

    info: EngineInfo

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Run one turn to its end and return its per-step record."""
        ...

    async def aclose(self) -> None: ...


def visible_text(chat: ChatFormat, token_ids: list[int], finish_reason: str) -> str:
    """The turn's text from its token ids, as the reference engine writes it: a stop token
    that ended the turn (a special token, last, with finish reason `stop`) is left out."""
    visible = token_ids
    if finish_reason == "stop" and token_ids:
        special = set(getattr(chat.tokenizer, "all_special_ids", None) or [])
        if token_ids[-1] in special | chat.stop_token_ids:
            visible = token_ids[:-1]
    return chat.decode(visible)


def cross_check_verdict(checks: dict[str, bool]) -> str:
    """`none` (the engine reported nothing to compare), `ok`, or `mismatch`."""
    return "none" if not checks else "ok" if all(checks.values()) else "mismatch"


# kind -> "module:factory"; the factory is called as factory(config, chat_format). A module
# may also define `preflight(config)`: cheap checks run before the tokenizer or model load.
ENGINES: dict[str, str] = {
    "reference": "bench.engines.reference:ReferenceEngine",
    "openai": "bench.engines.openai_compat:OpenAIEngine",
    "trtllm": "bench.engines.trtllm:TrtllmEngine",
}


def _engine_module(config: RunConfig) -> tuple[Any, str]:
    kind = config.engine.kind
    if kind not in ENGINES:
        raise BenchError(
            f"engine {kind!r} is not available in this version of bench "
            f"(available: {', '.join(sorted(ENGINES))})"
        )
    module_name, _, attr = ENGINES[kind].partition(":")
    return importlib.import_module(module_name), attr


def preflight_engine(config: RunConfig) -> None:
    """Fail early, with one sentence, when the engine cannot run here (e.g. not installed)."""
    module, _ = _engine_module(config)
    check = getattr(module, "preflight", None)
    if check is not None:
        check(config)


def create_engine(config: RunConfig, chat_format: ChatFormat) -> Engine:
    module, attr = _engine_module(config)
    return getattr(module, attr)(config, chat_format)

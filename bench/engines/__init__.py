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
    info: EngineInfo

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        """Run one turn to its end and return its per-step record."""
        ...

    async def aclose(self) -> None: ...


# kind -> "module:factory"; the factory is called as factory(config, chat_format).
ENGINES: dict[str, str] = {
    "reference": "bench.engines.reference:ReferenceEngine",
}


def create_engine(config: RunConfig, chat_format: ChatFormat) -> Engine:
    kind = config.engine.kind
    if kind not in ENGINES:
        raise BenchError(
            f"engine {kind!r} is not available in this version of bench "
            f"(available: {', '.join(sorted(ENGINES))})"
        )
    module_name, _, attr = ENGINES[kind].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(config, chat_format)

"""A stand-in with the shape of TensorRT-LLM's LLM API (docs/engines.md, "trtllm"), since
the real package cannot be installed here: `generate_async(prompt, sampling_params, streaming=True)`
yields RequestOutput-like updates whose `outputs[0].token_ids` grow by one iteration's
tokens, with `decoding_iter` and `avg_decoded_tokens_per_iter`; `get_stats(timeout)`
returns iteration statistics as JSON strings; and an `llmapi` module with the EAGLE
decoding configs of releases 1.0/1.1 and 1.2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 1.0
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    finished: bool = False
    decoding_iter: int = 0
    avg_decoded_tokens_per_iter: float | None = None


class StandInLLM:
    """Replays `steps` (tokens per iteration) for every request."""

    SamplingParams = SamplingParams
    version = "1.2.0rc0 (stand-in)"

    def __init__(
        self,
        steps: list[int],
        eos: int | None = None,
        iter_offset: int = 0,
        stream_interval: int = 1,
    ):
        self.steps = steps
        self.eos = eos
        self.iter_offset = iter_offset  # a deliberately wrong decoding_iter
        # As TensorRT-LLM's py_executor: an update on the first iteration, then every
        # `stream_interval` iterations, and at the end.
        self.stream_interval = stream_interval
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self._stats: list[str] = []

    async def generate_async(
        self, prompt: list[int], sampling_params: SamplingParams, streaming: bool = False
    ):
        self.requests.append((prompt, sampling_params))
        out = RequestOutput([CompletionOutput()])
        token = 100
        for i, n in enumerate(self.steps):
            new = list(range(token, token + n))
            token += n
            last = i == len(self.steps) - 1
            if last and self.eos is not None:
                new[-1] = self.eos
            out.outputs[0].token_ids = out.outputs[0].token_ids + new
            out.decoding_iter = i + 1 + self.iter_offset
            out.avg_decoded_tokens_per_iter = len(out.outputs[0].token_ids) / (i + 1)
            if last:
                out.outputs[0].finish_reason = "stop" if self.eos is not None else "length"
                out.finished = True
            self._stats.append(
                json.dumps(
                    {
                        "iter": len(self._stats),
                        "specDecodingStats": {
                            "numDraftTokens": 0 if i == 0 else 3,
                            "numAcceptedTokens": 0 if i == 0 else n - 1,
                        },
                    }
                )
            )
            if i == 0 or last or (i + 1) % self.stream_interval == 0:
                yield out

    def get_stats(self, timeout: float = 2) -> list[str]:
        taken, self._stats = self._stats, []
        return taken

    def shutdown(self) -> None:
        self.closed = True


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EagleDecodingConfig(_Config):  # 1.0 / 1.1
    max_draft_len: int
    speculative_model_dir: str
    eagle3_one_model: bool = True


class Eagle3DecodingConfig(EagleDecodingConfig):  # 1.2
    speculative_model: str | None = None
    speculative_model_dir: str | None = None


class KvCacheConfig(_Config):
    free_gpu_memory_fraction: float | None = None


def llmapi(release: str) -> Any:
    """The `tensorrt_llm.llmapi` names the engine uses, as in `release` ("1.1" or "1.2")."""
    names = {"EagleDecodingConfig": EagleDecodingConfig, "KvCacheConfig": KvCacheConfig}
    if release >= "1.2":
        names["Eagle3DecodingConfig"] = Eagle3DecodingConfig
    return SimpleNamespace(**names)

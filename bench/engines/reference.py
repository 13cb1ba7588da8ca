"""The reference engine: the speculative decoder (bench/engines/speculative.py) behind the
async engine interface, in process with PyTorch + transformers.

It is the ground truth the other engines are checked against, and the embedded default
(SmolLM2-135M-Instruct on the CPU). Per-step counts come from the decoding loop itself, so
they are exact. At temperature 0 it is lossless: its output equals plain greedy decoding of
the target, token for token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import __version__
from bench.config import RunConfig
from bench.conversation import ChatFormat, Message
from bench.engines import EngineInfo, EngineTotals, Generation, SamplingParams, reconcile
from bench.engines.drafters import NoDrafter, build_drafter
from bench.engines.speculative import IterationStats, SpeculativeDecoder, TurnInFlight, verify
from bench.errors import BenchError
from bench.target import load_target_model, pick_device

try:
    import torch
except ImportError:  # the registry imports this module only when the engine is chosen
    torch = None  # type: ignore[assignment]

__all__ = ["IterationStats", "ReferenceEngine", "SpeculativeDecoder", "verify"]


_shared_models: dict[str, Any] | None = None


@contextlib.contextmanager
def sharing_loaded_models() -> Iterator[None]:
    """Within this block, engines on the same target (same file, device, dtype and
    quantisation) share one loaded model instead of loading it again: the cells of a sweep.
    The model is only read (inference mode), so sharing changes nothing measured."""
    global _shared_models
    previous, _shared_models = _shared_models, {}
    try:
        yield
    finally:
        _shared_models = previous


def _target_model(config: RunConfig, device: str) -> Any:
    if _shared_models is None:
        return load_target_model(config, device)
    key = f"{device}|{config.target.model_dump_json()}"
    if key not in _shared_models:
        _shared_models[key] = load_target_model(config, device)
    return _shared_models[key]


def default_batch_size(device: str) -> int:
    """Turns in flight when the config leaves it open. On a 2-core CPU 16 decodes fastest
    (`scripts/throughput.py --sweep 8,16,24,32 --limit 48 --max-tokens 128`: 64, 88, 86,
    82 tokens/s); a GPU keeps gaining well beyond (64 is a guess, not measured here)."""
    return 64 if device == "cuda" else 16


class ReferenceEngine:
    """The `reference` engine: `SpeculativeDecoder` behind the async engine interface.

    Turns submitted concurrently (`generate` awaited by many tasks) are decoded together.
    The decoding loop runs on the event loop's thread, one step at a time, yielding between
    steps so that new turns (e.g. a turn 2 whose turn 1 just ended) join at the next step:
    which turns share a step is then a function of the inputs alone, so a run is
    reproducible, and Ctrl-C stops it between two steps.
    """

    def __init__(self, config: RunConfig, chat_format: ChatFormat) -> None:
        if torch is None:
            raise BenchError("the reference engine needs PyTorch: pip install 'bench[reference]'")
        engine = config.engine
        device = pick_device(engine.device)
        if device == "cpu":
            torch.set_num_threads(engine.threads or os.cpu_count() or 1)
        self.model = _target_model(config, device)
        self.chat_format = chat_format
        stop = set(chat_format.stop_token_ids)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        if not stop:
            raise BenchError(f"{config.target.name} declares no end-of-sequence token")
        self.batch_size = engine.batch_size or default_batch_size(device)
        if config.draft_len == 0:  # speculation off: no drafter is even loaded
            drafter, drafter_info = NoDrafter(), {"kind": "none"}
        else:
            drafter, drafter_info = build_drafter(
                engine.drafter, self.model, chat_format.tokenizer, device, self.batch_size
            )
        self.decoder = SpeculativeDecoder(self.model, drafter, stop, self.batch_size)
        self._futures: dict[TurnInFlight, asyncio.Future[Generation]] = {}
        self.on_iteration: Callable[[IterationStats], None] | None = None
        """Called with each target forward's counts (bench serve's /metrics)."""
        self._driver: asyncio.Task[None] | None = None
        import transformers

        self.info = EngineInfo(
            name="reference",
            version=f"bench {__version__} (torch {torch.__version__}, "
            f"transformers {transformers.__version__})",
            details={
                "device": device,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "quantization": config.target.quantization,
                "threads": torch.get_num_threads() if device == "cpu" else None,
                "batch_size": self.batch_size,
                "drafter": drafter_info,
                "stop_token_ids": sorted(stop),
                "architecture": type(self.model).__name__,
            },
            batch_size=self.batch_size,
        )

    def generation(self, row: TurnInFlight) -> Generation:
        stopped = row.out[-1] in self.decoder.stop_token_ids
        visible = row.out[:-1] if stopped else row.out
        # The loop is the engine: its totals are its steps, so the detail is exact.
        totals = EngineTotals(
            output_tokens=sum(row.steps),
            steps=len(row.steps),
            accepted_drafts=sum(e - 1 for e in row.steps[1:]),
            proposed_drafts=sum(row.drafted[1:]),
            source="reference decoder: its own verification loop",
        )
        detail, counted = reconcile(row.steps, totals, row.sampling.draft_len)
        return Generation(
            steps=row.steps,
            prefill_step=True,
            step_detail=detail,
            totals=totals,
            counted=counted,
            drafted=row.drafted,
            token_ids=row.out,
            text=self.chat_format.decode(visible),
            finish_reason="stop" if stopped else "length",
            ttft_s=row.ttft_s,
            duration_s=time.perf_counter() - row.submitted,
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        messages: list[Message] | None = None,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Generation:
        """Decode one turn in the shared batch; `on_step` gets each step's tokens as they
        come (raising from it cancels the turn). Cancelling the caller frees its slot."""
        loop = asyncio.get_running_loop()
        row = self.decoder.submit(prompt_ids, sampling, on_step)
        future = self._futures[row] = loop.create_future()
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        try:
            return await future
        except asyncio.CancelledError:
            self.decoder.cancel(row)
            raise
        finally:
            self._futures.pop(row, None)

    async def _drive(self) -> None:
        """Step the decoder while turns are in flight, yielding to the callers in between."""
        while True:
            await asyncio.sleep(0)  # every caller that is ready submits before the step
            if not self.decoder.busy:
                return
            try:
                result = self.decoder.step()
            except BaseException as err:  # e.g. a second Ctrl-C inside a forward
                for future in self._futures.values():
                    if not future.done():
                        future.set_exception(err)
                raise
            if self.on_iteration is not None:
                for stats in result.forwards:
                    self.on_iteration(stats)
            for row in result.finished:
                future = self._futures.get(row)
                if future is None or future.done():
                    continue
                if row.error is not None:
                    future.set_exception(row.error)
                else:
                    future.set_result(self.generation(row))

    async def aclose(self) -> None:
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()
        self.model = None

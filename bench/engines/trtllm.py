"""The `trtllm` engine: TensorRT-LLM's LLM API in process (PyTorch backend) with EAGLE-3.

Per-step counts come from the token growth of each streamed update of
`llm.generate_async(prompt_ids, sampling_params, streaming=True)`: with the default
`stream_interval=1` every update is one iteration of the engine, the first one the prefill.
Each turn is cross-checked against the request's own `decoding_iter` (iterations,
the prefill included) and `avg_decoded_tokens_per_iter` where the release has them, and
against the iteration statistics (`llm.get_stats`, `specDecodingStats`) at concurrency 1;
both numbers are recorded and a disagreement is marked `cross_check: mismatch`.

`tensorrt_llm` is imported only here; on a machine without it (or without a GPU) the
engine stops the run with one sentence saying how to install it.
"""

from __future__ import annotations

import time
from typing import Any

from bench.config import RunConfig, TrtllmEngineConfig
from bench.conversation import ChatFormat, Message
from bench.engines import (
    EngineInfo,
    EngineTotals,
    Generation,
    SamplingParams,
    check_draft_len,
    cross_check_verdict,
    reconcile,
    visible_text,
)
from bench.engines.openai_compat import compare_engine_counters, iteration_counters
from bench.errors import BenchError

INSTALL = (
    "the trtllm engine needs TensorRT-LLM on a machine with an NVIDIA GPU: install it there "
    "with `pip install tensorrt-llm` (or use NVIDIA's TensorRT-LLM container), see the "
    "README's 'GPU runs', or drive a running trtllm-serve with --engine openai"
)


def import_tensorrt_llm() -> Any:
    try:
        import tensorrt_llm
    except Exception:  # ImportError, or a broken install failing on its CUDA libraries
        raise BenchError(INSTALL) from None
    return tensorrt_llm


def preflight(config: RunConfig) -> None:
    import_tensorrt_llm()
    try:
        import torch
    except ImportError:
        raise BenchError(INSTALL) from None
    if not torch.cuda.is_available():
        raise BenchError(INSTALL)


def speculative_config(llmapi: Any, engine: TrtllmEngineConfig, draft_len: int) -> Any:
    """EAGLE-3 for the installed release: `Eagle3DecodingConfig` where it exists (1.2+,
    field `speculative_model`), else `EagleDecodingConfig` (`speculative_model_dir`)."""
    cls = getattr(llmapi, "Eagle3DecodingConfig", None) or llmapi.EagleDecodingConfig
    fields = getattr(cls, "model_fields", {})
    model_field = "speculative_model" if "speculative_model" in fields else "speculative_model_dir"
    return cls(
        max_draft_len=draft_len,
        eagle3_one_model=engine.eagle3_one_model,
        **{model_field: engine.speculative_model_dir},
    )


def llm_kwargs(config: RunConfig, llmapi: Any) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.LLM`; unset fields keep TensorRT-LLM's defaults."""
    engine = config.engine
    assert isinstance(engine, TrtllmEngineConfig)
    target = config.target
    if target.path is None and target.hf_id is None:
        raise BenchError("the trtllm engine needs target.path or target.hf_id")
    if engine.speculative_model_dir is None and config.draft_len > 0:
        raise BenchError("the trtllm engine needs engine.speculative_model_dir (the EAGLE-3 head)")
    kwargs: dict[str, Any] = {
        "model": target.path or target.hf_id,
        "trust_remote_code": target.trust_remote_code,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enable_iter_perf_stats": engine.enable_iter_perf_stats,
    }
    if config.draft_len > 0:  # --draft-len 0: the same target without speculation
        kwargs["speculative_config"] = speculative_config(llmapi, engine, config.draft_len)
    if target.tokenizer:
        kwargs["tokenizer"] = target.tokenizer
    if target.revision:
        kwargs["revision"] = target.revision
    optional = {
        "moe_expert_parallel_size": engine.moe_expert_parallel_size,
        "max_batch_size": engine.max_batch_size,
        "max_num_tokens": engine.max_num_tokens,
        "max_seq_len": engine.max_seq_len,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if engine.kv_cache_free_gpu_memory_fraction is not None:
        kwargs["kv_cache_config"] = llmapi.KvCacheConfig(
            free_gpu_memory_fraction=engine.kv_cache_free_gpu_memory_fraction
        )
    kwargs.update(engine.llm_args)
    return kwargs


def _request_counter(output: Any, name: str) -> Any:
    """A per-request counter, on the RequestOutput or its first CompletionOutput."""
    value = getattr(output, name, None)
    if value is None and getattr(output, "outputs", None):
        value = getattr(output.outputs[0], name, None)
    return value


def request_totals(output: Any, output_tokens: int) -> EngineTotals | None:
    """The request's own iteration count: `decoding_iter` (the prefill iteration
    included), else tokens / `avg_decoded_tokens_per_iter`."""
    decoding_iter = _request_counter(output, "decoding_iter")
    if isinstance(decoding_iter, int) and decoding_iter > 0:
        return EngineTotals(
            output_tokens=output_tokens,
            steps=decoding_iter,
            accepted_drafts=output_tokens - decoding_iter,
            source="tensorrt_llm RequestOutput.decoding_iter (the prefill iteration included)",
        )
    avg = _request_counter(output, "avg_decoded_tokens_per_iter")
    if isinstance(avg, (int, float)) and avg > 0 and output_tokens:
        steps = round(output_tokens / avg)
        return EngineTotals(
            output_tokens=output_tokens,
            steps=steps,
            accepted_drafts=output_tokens - steps,
            source="tensorrt_llm avg_decoded_tokens_per_iter: steps = tokens / average",
        )
    return None


class TrtllmEngine:
    def __init__(self, config: RunConfig, chat: ChatFormat, llm: Any = None) -> None:
        """`llm` replaces `tensorrt_llm.LLM(...)` (tests pass a stand-in)."""
        engine = config.engine
        assert isinstance(engine, TrtllmEngineConfig)
        self.config = config
        self.chat = chat
        if llm is None:
            trt = import_tensorrt_llm()
            from tensorrt_llm import llmapi

            self.sampling_cls = trt.SamplingParams
            self.kwargs = llm_kwargs(config, llmapi)
            llm = trt.LLM(**self.kwargs)
            version = getattr(trt, "__version__", "unknown")
        else:
            self.sampling_cls = llm.SamplingParams
            self.kwargs = {}
            version = getattr(llm, "version", "stand-in")
        self.llm = llm
        self.info = EngineInfo(
            name="trtllm",
            version=f"tensorrt_llm {version}",
            details={
                "llm_args": {k: repr(v) for k, v in self.kwargs.items()},
                "draft_len": config.draft_len,
                "eagle3_one_model": engine.eagle3_one_model,
                "speculative_model_dir": engine.speculative_model_dir,
            },
        )

    def _sampling(self, sampling: SamplingParams) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
        }
        if sampling.temperature > 0 and sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        return self.sampling_cls(**kwargs)

    def _iteration_stats(self) -> dict[str, float] | None:
        if self.config.concurrency != 1 or not hasattr(self.llm, "get_stats"):
            return None
        try:
            entries = self.llm.get_stats(timeout=2)
        except Exception:  # statistics are a cross-check; their absence is recorded
            return None
        import json

        parsed = [json.loads(e) if isinstance(e, str) else e for e in entries or []]
        return iteration_counters(parsed)

    async def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        messages: list[Message] | None = None,
    ) -> Generation:
        self._iteration_stats()  # drain what earlier turns left
        start = time.perf_counter()
        steps: list[int] = []
        ttft_s = None
        last: Any = None
        seen = 0
        stream = self.llm.generate_async(prompt_ids, self._sampling(sampling), streaming=True)
        async for output in stream:
            last = output
            completion = output.outputs[0]
            grown = len(completion.token_ids) - seen
            if grown < 0:
                raise RuntimeError("the streamed token list shrank between two updates")
            if grown == 0:
                continue  # an update without tokens is not a step
            if not steps:
                ttft_s = time.perf_counter() - start
            steps.append(grown)
            seen += grown
        if last is None or not steps:
            raise RuntimeError("TensorRT-LLM returned no tokens for this turn")
        completion = last.outputs[0]
        token_ids = list(completion.token_ids)
        finish = "length" if completion.finish_reason == "length" else "stop"
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"TensorRT-LLM ended the turn with {completion.finish_reason!r}")
        totals = request_totals(last, len(token_ids))
        detail, counted = reconcile(steps, totals, sampling.draft_len)
        check_draft_len(steps, detail, counted, len(token_ids), sampling.draft_len)
        return Generation(
            steps=steps,
            prefill_step=True,
            step_detail=detail,
            totals=totals,
            counted=counted,
            token_ids=token_ids,
            text=visible_text(self.chat, token_ids, finish),
            finish_reason=finish,
            ttft_s=ttft_s,
            duration_s=time.perf_counter() - start,
            engine_counters=self._counters(last, steps, sampling.draft_len),
        )

    def _counters(self, output: Any, steps: list[int], draft_len: int) -> dict[str, Any]:
        counters: dict[str, Any] = {"step_source": "token_growth"}
        checks: dict[str, bool] = {}
        for name in ("decoding_iter", "avg_decoded_tokens_per_iter"):
            value = _request_counter(output, name)
            if isinstance(value, (int, float)):
                counters[name] = value
        stats = self._iteration_stats()
        if stats is not None and stats["iterations"]:
            counters["iteration_stats"] = stats
            checks.update(compare_engine_counters("trtllm", stats, steps, draft_len))
        counters["checks"] = checks
        counters["cross_check"] = cross_check_verdict(checks)
        return counters

    async def aclose(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "shutdown"):
            llm.shutdown()

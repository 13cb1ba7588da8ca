"""The reference engine: a speculative decoder in PyTorch + transformers, in process.

It is the ground truth the other engines are checked against, and the embedded default
(SmolLM2-135M-Instruct on the CPU). Per-step counts come from the loop itself, so they are
exact. At temperature 0 it is lossless: its output equals plain greedy decoding of the
target, token for token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench import __version__
from bench.config import RunConfig, TargetConfig
from bench.conversation import ChatFormat
from bench.engines import EngineInfo, SamplingParams
from bench.engines.drafters import Drafter, DraftInputs, Proposal, build_drafter, cache_argument
from bench.errors import BenchError
from bench.records import Generation

try:
    import torch
except ImportError:  # the registry imports this module only when the engine is chosen
    torch = None  # type: ignore[assignment]


def verify(
    logits: torch.Tensor,
    proposal: Proposal,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """Accept a prefix of the drafts and pick the next token.

    logits: [1 + d, V] target logits; row i predicts the token after the i-th input (the
    last accepted token, then draft 1..d). Returns (accepted drafts a, next token): the
    step emits drafts[:a] + [next], i.e. 1 + a tokens.
    """
    drafts = proposal.tokens
    d = len(drafts)
    if temperature == 0:
        # Greedy: accept while the draft equals the target's argmax; the first
        # disagreement (or the bonus row after d accepted) gives the target's own token.
        target = logits.argmax(dim=-1)  # [1 + d]
        matches = (target[:d] == torch.tensor(drafts, device=target.device)).int()
        accepted = int(matches.cumprod(0).sum()) if d else 0
        return accepted, int(target[accepted])

    # Speculative sampling (Leviathan et al.): accept draft x with prob min(1, p(x)/q(x));
    # on rejection sample from max(0, p - q) renormalised; after d acceptances sample the
    # bonus token from p. The result is distributed exactly as sampling from p alone.
    p = torch.softmax(logits.float() / temperature, dim=-1).cpu()  # [1 + d, V]
    for i, token in enumerate(drafts):
        if proposal.probs is not None:
            q = proposal.probs[i].float().cpu()
        else:  # a deterministic drafter: its distribution is one-hot on its choice
            q = torch.zeros_like(p[i])
            q[token] = 1.0
        ratio = (p[i, token] / q[token].clamp_min(1e-20)).clamp(max=1.0)
        if torch.rand((), generator=generator) < ratio:
            continue
        residual = (p[i] - q).clamp_min(0.0)
        total = residual.sum()
        dist = residual / total if total > 0 else p[i]
        return i, int(torch.multinomial(dist, 1, generator=generator))
    return d, int(torch.multinomial(p[d], 1, generator=generator))


class SpeculativeDecoder:
    """Draft k tokens, verify them in one target pass, keep the agreed prefix plus one."""

    def __init__(self, model: Any, drafter: Drafter, stop_token_ids: set[int]) -> None:
        self.model = model
        self.drafter = drafter
        self.stop_token_ids = stop_token_ids
        self.device = next(model.parameters()).device
        self._cache_arg = cache_argument(model)
        # hidden_states indices the drafter reads (EAGLE-3: three); never the last, normed one.
        self.captured = tuple(getattr(drafter, "captured_layers", ()))

    def _forward(self, token_ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits [n, V] for n new tokens appended to the cached context, and from the same
        pass the drafter's captured hidden states [n, C·H] (None when it needs none)."""
        inputs = torch.tensor([token_ids], device=self.device)
        kwargs = {self._cache_arg: cache}
        out = self.model(
            input_ids=inputs, use_cache=True, output_hidden_states=bool(self.captured), **kwargs
        )
        if not self.captured:
            return out.logits[0], None
        return out.logits[0], torch.cat([out.hidden_states[i][0] for i in self.captured], dim=-1)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> tuple[list[int], list[int], list[int], float]:
        """Returns (token ids, emitted per step, drafted per step, seconds to first token)."""
        from transformers import DynamicCache

        start = time.perf_counter()
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator().manual_seed(sampling.seed or 0)
        cache = DynamicCache()

        # Prefill: one pass over the prompt yields the first token (a step of 1, flagged).
        logits, hidden = self._forward(prompt_ids, cache)  # [P, V], [P, C·H] | None
        _, first = verify(logits[-1:], Proposal([]), sampling.temperature, generator)
        out, steps, drafted = [first], [1], [0]
        seen = DraftInputs(0, hidden, sampling.temperature, generator)
        ttft_s = time.perf_counter() - start
        if on_step:
            on_step([first])

        while out[-1] not in self.stop_token_ids and len(out) < sampling.max_tokens:
            # Never draft past max_tokens: a step emits at most k + 1 tokens.
            k = min(sampling.draft_len, sampling.max_tokens - len(out) - 1)
            proposal = self.drafter.propose(prompt_ids + out, k, seen)
            d = len(proposal.tokens)
            # The cache holds every context token but the newest; feed it plus the drafts.
            position = len(prompt_ids) + len(out) - 1  # of out[-1]
            logits, hidden = self._forward([out[-1], *proposal.tokens], cache)  # [1 + d, V]
            accepted, next_token = verify(logits, proposal, sampling.temperature, generator)
            self.drafter.accept(accepted)
            new = [*proposal.tokens[:accepted], next_token]
            for i, token in enumerate(new):  # a stop token ends the turn inside a step
                if token in self.stop_token_ids:
                    new = new[: i + 1]
                    break
            # Roll the cache back to the accepted context (the rejected drafts leave), and
            # keep the hidden states of the rows that stay (out[-1] and the accepted drafts).
            if d > accepted:
                cache.crop(-(d - accepted))
            kept = None if hidden is None else hidden[: 1 + accepted]  # [1 + a, C·H]
            seen = DraftInputs(position, kept, sampling.temperature, generator)
            out.extend(new)
            steps.append(len(new))
            drafted.append(d)
            if on_step:
                on_step(new)
        return out, steps, drafted, ttft_s


def _pick_device(wanted: str) -> str:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise BenchError("engine.device is cuda but PyTorch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def load_causal_lm(
    target: TargetConfig, device: str, role: str = "target model"
) -> tuple[Any, str | None]:
    """A causal LM (the target, or a draft model) and the sha256 of its files (None when the
    files cannot be found locally to hash)."""
    from transformers import AutoModelForCausalLM

    from bench.engines.quantize import quantize_target
    from bench.target import checkpoint_sha256, local_files, pretrained_kwargs, resolve_target

    resolved = resolve_target(target)
    kwargs = pretrained_kwargs(target, resolved)
    dtype = target.dtype
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.location, **kwargs)
    except Exception as err:
        raise BenchError(f"could not load the {role} {target.name}: {err}") from None
    model = quantize_target(model, target.quantization, device)
    sha256 = resolved.sha256
    if sha256 is None:
        folder = local_files(resolved.location, target.revision, resolved.gguf_file)
        sha256 = checkpoint_sha256(folder, resolved.gguf_file) if folder else None
    return model.to(device).eval(), sha256


def load_target_model(config: RunConfig, device: str) -> Any:
    return load_causal_lm(config.target, device)[0]


class ReferenceEngine:
    """The `reference` engine: `SpeculativeDecoder` behind the async engine interface."""

    def __init__(self, config: RunConfig, chat_format: ChatFormat) -> None:
        if torch is None:
            raise BenchError("the reference engine needs PyTorch: pip install 'bench[reference]'")
        engine = config.engine
        device = _pick_device(engine.device)
        if device == "cpu":
            torch.set_num_threads(engine.threads or os.cpu_count() or 1)
        self.model = load_target_model(config, device)
        self.chat_format = chat_format
        stop = set(chat_format.stop_token_ids)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        if not stop:
            raise BenchError(f"{config.target.name} declares no end-of-sequence token")
        drafter, drafter_info = build_drafter(
            engine.drafter, self.model, chat_format.tokenizer, device
        )
        self.decoder = SpeculativeDecoder(self.model, drafter, stop)
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
                "drafter": drafter_info,
                "stop_token_ids": sorted(stop),
                "architecture": type(self.model).__name__,
            },
        )

    def generate_sync(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Generation:
        start = time.perf_counter()
        tokens, steps, drafted, ttft_s = self.decoder.generate(prompt_ids, sampling, on_step)
        stopped = tokens[-1] in self.decoder.stop_token_ids
        visible = tokens[:-1] if stopped else tokens
        return Generation(
            steps=steps,
            prefill_step=True,
            drafted=drafted,
            token_ids=tokens,
            text=self.chat_format.decode(visible),
            finish_reason="stop" if stopped else "length",
            ttft_s=ttft_s,
            duration_s=time.perf_counter() - start,
        )

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Generation:
        # Runs on the event loop's thread: Ctrl-C then stops it between two steps at once.
        return self.generate_sync(prompt_ids, sampling)

    async def aclose(self) -> None:
        self.model = None

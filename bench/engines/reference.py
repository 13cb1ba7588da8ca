"""The reference engine: a speculative decoder in PyTorch + transformers, in process.

It is the ground truth the other engines are checked against, and the embedded default
(SmolLM2-135M-Instruct on the CPU). Per-step counts come from the loop itself, so they are
exact. At temperature 0 it is lossless: its output equals plain greedy decoding of the
target, token for token.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import __version__
from bench.config import RunConfig, TargetConfig
from bench.conversation import ChatFormat, Message
from bench.engines import EngineInfo, EngineTotals, Generation, SamplingParams, reconcile
from bench.engines.drafters import (
    BatchDrafter,
    Drafter,
    DraftInputs,
    DraftRequest,
    Proposal,
    as_batch_drafter,
    build_drafter,
    cache_argument,
)
from bench.errors import BenchError

try:
    import torch

    from bench.engines.batching import BatchedLM
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


@dataclass(frozen=True)
class IterationStats:
    """One target forward of `SpeculativeDecoder.step()`: a prefill (each row's first token,
    no drafts) or a speculative step. Counts are summed over the forward's rows."""

    rows: int
    prefill: bool
    draft_tokens: int
    accepted_tokens: int
    """Drafts the verification accepted (a stop token may then cut the step shorter)."""
    rows_with_drafts: int
    emitted_tokens: int


@dataclass(eq=False)
class Row:
    """One turn in flight: its prompt, what it has emitted so far, and its slot."""

    prompt: list[int]
    sampling: SamplingParams
    on_step: Callable[[list[int]], None] | None
    submitted: float
    generator: Any = None
    slot: int = -1
    out: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    seen: DraftInputs | None = None
    ttft_s: float = 0.0
    error: BaseException | None = None
    done: bool = False
    reused: int = 0
    """Prompt tokens whose KV rows the slot already held (not prefilled again)."""


class SpeculativeDecoder:
    """Draft k tokens, verify them in one target pass, keep the agreed prefix plus one; for
    up to `batch_size` turns at once (continuous batching).

    Every `step()` first admits waiting turns into free slots (one prefill forward for all
    of them, which emits each one's first token), then runs one speculative step over every
    turn in flight: each drafts up to k tokens, a single target forward verifies all of
    them, and each row keeps its own number of tokens. A finished turn leaves at once and its
    slot takes the next waiting turn at the following step; nobody waits for the batch to
    drain. Per-row KV state lives in a slot cache (bench/engines/batching.py), so rows of
    different lengths and acceptance never disturb each other.

    Each row's record is what the one-row engine records: the same drafts from the same
    context, the same verification rule, the same per-step counts. Only float rounding of
    batched products differs, which can flip a near-tie between two tokens.

    A slot keeps the KV rows of the turn that left it: a joining turn takes the free slot
    whose tokens share the longest prefix with its prompt and prefills only the rest (turn
    2's prompt starts with turn 1's prompt and answer; every prompt starts with the system
    text). Not with drafters that read the target's hidden states (EAGLE-3), which need
    them for the whole prompt.
    """

    def __init__(
        self,
        model: Any,
        drafter: Drafter | BatchDrafter,
        stop_token_ids: set[int],
        batch_size: int = 1,
    ) -> None:
        self.model = model
        self.stop_token_ids = stop_token_ids
        self.batch_size = batch_size
        self.drafter = as_batch_drafter(drafter, batch_size)
        self.lm = BatchedLM(model, batch_size, cache_argument(model))
        # hidden_states indices the drafter reads (EAGLE-3: three); never the last, normed one.
        self.captured = tuple(getattr(self.drafter, "captured_layers", ()))
        self.waiting: deque[Row] = deque()
        self.running: dict[int, Row] = {}  # slot -> row
        self.free = list(range(batch_size))  # sorted
        self.on_iteration: Callable[[IterationStats], None] | None = None  # e.g. bench serve

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Row:
        """Queue a turn; it joins the batch at the next `step()` with a free slot."""
        if not prompt_ids:
            raise BenchError("the prompt is empty")
        row = Row(list(prompt_ids), sampling, on_step, time.perf_counter())
        if sampling.temperature > 0:
            row.generator = torch.Generator().manual_seed(sampling.seed or 0)
        self.waiting.append(row)
        return row

    def cancel(self, row: Row) -> None:
        """Drop a turn (its client went away); its slot is free at once."""
        if row in self.waiting:
            self.waiting.remove(row)
        elif self.running.get(row.slot) is row:
            self._leave(row)
        row.done = True

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Admit waiting turns, then one speculative step for all; returns the turns that
        finished (or failed: `row.error`) in it."""
        finished: list[Row] = []
        joining = []
        while self.waiting and self.free:
            row = self.waiting.popleft()
            row.slot, row.reused = self._take_slot(row.prompt)
            self.running[row.slot] = row
            joining.append(row)
        if joining:
            finished += self._guarded(joining, self._prefill)
        decoding = [self.running[slot] for slot in sorted(self.running)]
        decoding = [row for row in decoding if not row.done]
        if decoding:
            finished += self._guarded(decoding, self._decode)
        return finished

    def _take_slot(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot holding the longest prefix of `prompt` (the lowest on ties), and
        how many of its rows to keep (all but the prompt's last token at most: the prefill
        must feed one token to get the next one's logits)."""
        best, keep = self.free[0], 0
        if not self.captured:
            for slot in self.free:
                common = self.lm.shared_prefix(slot, prompt)
                if common > keep:
                    best, keep = slot, common
        self.free.remove(best)
        return best, min(keep, len(prompt) - 1)

    def _guarded(self, rows: list[Row], work: Callable[[list[Row]], list[Row]]) -> list[Row]:
        """A fault in a batched forward fails every row in it, and only those."""
        try:
            return work(rows)
        except Exception as err:
            for row in rows:
                if not row.done:
                    row.error = err
                    self._leave(row)
            return rows

    def _prefill(self, rows: list[Row]) -> list[Row]:
        """One pass over the joining prompts yields each one's first token (a step of 1,
        flagged as the prefill)."""
        for row in rows:
            self.lm.reset(row.slot, row.reused)
            self.drafter.release(row.slot)
        slots = [row.slot for row in rows]
        fed = [row.prompt[row.reused :] for row in rows]
        logits, hidden = self.lm.forward(slots, fed, self.captured, last_only=True)
        finished = []
        for r, row in enumerate(rows):
            self.lm.commit(row.slot, len(fed[r]))
            temperature = row.sampling.temperature
            _, first = verify(logits[r][-1:], Proposal([]), temperature, row.generator)
            row.seen = DraftInputs(
                row.reused, None if hidden is None else hidden[r], temperature, row.generator
            )
            row.ttft_s = time.perf_counter() - row.submitted
            if self._emit(row, [first], 0):
                finished.append(row)
        if self.on_iteration is not None:
            self.on_iteration(IterationStats(len(rows), True, 0, 0, 0, len(rows)))
        return finished

    def _decode(self, rows: list[Row]) -> list[Row]:
        requests = []
        for row in rows:
            # Never draft past max_tokens: a step emits at most k + 1 tokens.
            k = min(row.sampling.draft_len, row.sampling.max_tokens - len(row.out) - 1)
            requests.append(DraftRequest(row.slot, row.prompt + row.out, k, row.seen))
        proposals = self.drafter.propose_batch(requests)
        # The cache holds every context token but the newest; feed it plus the drafts.
        blocks = [[row.out[-1], *p.tokens] for row, p in zip(rows, proposals)]
        logits, hidden = self.lm.forward([row.slot for row in rows], blocks, self.captured)
        accepted_by_slot: dict[int, int] = {}
        emitted = []
        for r, (row, proposal) in enumerate(zip(rows, proposals)):
            temperature = row.sampling.temperature
            accepted, next_token = verify(logits[r], proposal, temperature, row.generator)
            accepted_by_slot[row.slot] = accepted
            new = [*proposal.tokens[:accepted], next_token]
            for i, token in enumerate(new):  # a stop token ends the turn inside a step
                if token in self.stop_token_ids:
                    new = new[: i + 1]
                    break
            emitted.append(new)
            # The rejected drafts leave the context (the slot keeps out[-1] and the accepted
            # drafts), with the hidden states of the rows that stay.
            self.lm.commit(row.slot, 1 + accepted)
            position = len(row.prompt) + len(row.out) - 1  # of out[-1]
            kept = None if hidden is None else hidden[r][: 1 + accepted]  # [1 + a, C·H]
            row.seen = DraftInputs(position, kept, temperature, row.generator)
        self.drafter.accept_batch(accepted_by_slot)
        finished = [
            row
            for row, proposal, new in zip(rows, proposals, emitted)
            if self._emit(row, new, len(proposal.tokens))
        ]
        if self.on_iteration is not None:
            drafted = [len(p.tokens) for p in proposals]
            self.on_iteration(
                IterationStats(
                    len(rows),
                    False,
                    sum(drafted),
                    sum(accepted_by_slot.values()),
                    sum(d > 0 for d in drafted),
                    sum(len(new) for new in emitted),
                )
            )
        return finished

    def _emit(self, row: Row, new: list[int], drafted: int) -> bool:
        """Record one step of a row and stream it; True when the row finished."""
        row.out.extend(new)
        row.steps.append(len(new))
        row.drafted.append(drafted)
        if row.on_step is not None:
            try:
                row.on_step(new)
            except Exception as err:  # the listener is gone (a cancelled request)
                row.error = err
        if (
            row.error
            or row.out[-1] in self.stop_token_ids
            or (len(row.out) >= row.sampling.max_tokens)
        ):
            self._leave(row)
            return True
        return False

    def _leave(self, row: Row) -> None:
        row.done = True
        if self.running.get(row.slot) is row:
            del self.running[row.slot]
            self.drafter.release(row.slot)
            bisect.insort(self.free, row.slot)  # its rows stay, for a turn that continues them

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> tuple[list[int], list[int], list[int], float]:
        """One turn on its own. Returns (token ids, emitted per step, drafted per step,
        seconds to first token)."""
        row = self.run_alone(prompt_ids, sampling, on_step)
        return row.out, row.steps, row.drafted, row.ttft_s

    def run_alone(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Row:
        """Decode one turn to its end on an idle decoder (scripts, tests)."""
        if self.busy:
            raise RuntimeError("an idle decoder runs one turn alone; submit() and step() instead")
        row = self.submit(prompt_ids, sampling, on_step)
        while not row.done:
            self.step()
        if row.error is not None:
            raise row.error
        return row


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
        self.batch_size = engine.batch_size or default_batch_size(device)
        drafter, drafter_info = build_drafter(
            engine.drafter, self.model, chat_format.tokenizer, device, self.batch_size
        )
        self.decoder = SpeculativeDecoder(self.model, drafter, stop, self.batch_size)
        self._futures: dict[Row, asyncio.Future[Generation]] = {}
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

    def generation(self, row: Row) -> Generation:
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
        return Generation(
            steps=row.steps,
            prefill_step=True,
            step_detail=reconcile(row.steps, totals),
            totals=totals,
            drafted=row.drafted,
            token_ids=row.out,
            text=self.chat_format.decode(visible),
            finish_reason="stop" if stopped else "length",
            ttft_s=row.ttft_s,
            duration_s=time.perf_counter() - row.submitted,
        )

    def generate_sync(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Generation:
        """One turn on its own, outside any event loop (scripts, tests)."""
        return self.generation(self.decoder.run_alone(prompt_ids, sampling, on_step))

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
                finished = self.decoder.step()
            except BaseException as err:  # e.g. a second Ctrl-C inside a forward
                for future in self._futures.values():
                    if not future.done():
                        future.set_exception(err)
                raise
            for row in finished:
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

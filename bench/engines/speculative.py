"""The speculative core of the reference engine: draft k tokens, verify them in one target
pass, keep the agreed prefix plus one token, for up to `batch_size` turns at once.

`verify` is the acceptance rule (greedy, or speculative sampling at temperature > 0) and
`SpeculativeDecoder._speculate` is one step of the algorithm, top to bottom. The rest of
`SpeculativeDecoder` is bookkeeping: which turn holds which batch slot, the prefill that
emits each joining turn's first token, stop tokens and max_tokens. Each `step()` returns
the turns that finished and one `IterationStats` per target forward it ran; the engine
adapter (bench/engines/reference.py) turns those into `Generation`s and server metrics.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.engines import SamplingParams
from bench.engines.drafters import (
    BatchDrafter,
    Drafter,
    DraftInputs,
    DraftRequest,
    Proposal,
    as_batch_drafter,
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
class TurnInFlight:
    """One turn being decoded: its prompt, what it has emitted so far, and its batch slot."""

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


@dataclass
class StepResult:
    """What one `SpeculativeDecoder.step()` did."""

    finished: list[TurnInFlight] = field(default_factory=list)
    """Turns that ended in this step (or failed: `turn.error`)."""
    forwards: list[IterationStats] = field(default_factory=list)
    """One entry per target forward that completed: the prefill of joining turns, if any,
    then the speculative step."""


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
        self.waiting: deque[TurnInFlight] = deque()
        self.running: dict[int, TurnInFlight] = {}  # slot -> turn
        self.free = list(range(batch_size))  # sorted

    # -- the algorithm -------------------------------------------------------------------

    def _speculate(self, rows: list[TurnInFlight]) -> tuple[list[TurnInFlight], IterationStats]:
        """One speculative step over the turns in flight (one row each); returns the turns
        that finished and the forward's counts."""
        # 1. Draft: up to k tokens per row, never past max_tokens (a step emits <= k + 1).
        requests = []
        for row in rows:
            k = min(row.sampling.draft_len, row.sampling.max_tokens - len(row.out) - 1)
            requests.append(DraftRequest(row.slot, row.prompt + row.out, k, row.seen))
        proposals = self.drafter.propose_batch(requests)  # row r: d_r <= k tokens

        # 2. Verify: one target forward. The cache holds every context token but the
        # newest, so row r feeds [out[-1], draft_1..draft_d_r]: 1 + d_r tokens.
        blocks = [[row.out[-1], *p.tokens] for row, p in zip(rows, proposals)]
        logits, hidden = self.lm.forward([row.slot for row in rows], blocks, self.captured)
        # logits[r]: [1 + d_r, V]; hidden[r]: [1 + d_r, C·H] when the drafter reads them

        # 3. Accept: per row, a_r drafts and one token of the target's own.
        accepted: dict[int, int] = {}  # slot -> a_r
        emitted: list[list[int]] = []
        for r, (row, proposal) in enumerate(zip(rows, proposals)):
            temperature = row.sampling.temperature
            a, next_token = verify(logits[r], proposal, temperature, row.generator)
            accepted[row.slot] = a
            emitted.append(self._until_stop([*proposal.tokens[:a], next_token]))  # 1 + a
            # The rejected drafts leave the cache: it keeps out[-1] and the a accepted ones,
            # and the drafter keeps their hidden states for its next proposal.
            self.lm.commit(row.slot, 1 + a)
            position = len(row.prompt) + len(row.out) - 1  # of out[-1]
            kept = None if hidden is None else hidden[r][: 1 + a]  # [1 + a, C·H]
            row.seen = DraftInputs(position, kept, temperature, row.generator)
        self.drafter.accept_batch(accepted)

        # 4. Record: each row's step, and the forward's totals.
        drafted = [len(p.tokens) for p in proposals]
        finished = [row for row, new, d in zip(rows, emitted, drafted) if self._emit(row, new, d)]
        stats = IterationStats(
            rows=len(rows),
            prefill=False,
            draft_tokens=sum(drafted),
            accepted_tokens=sum(accepted.values()),
            rows_with_drafts=sum(d > 0 for d in drafted),
            emitted_tokens=sum(len(new) for new in emitted),
        )
        return finished, stats

    def _prefill(self, rows: list[TurnInFlight]) -> tuple[list[TurnInFlight], IterationStats]:
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
        return finished, IterationStats(len(rows), True, 0, 0, 0, len(rows))

    # -- turns and slots -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> TurnInFlight:
        """Queue a turn; it joins the batch at the next `step()` with a free slot."""
        if not prompt_ids:
            raise BenchError("the prompt is empty")
        row = TurnInFlight(list(prompt_ids), sampling, on_step, time.perf_counter())
        if sampling.temperature > 0:
            row.generator = torch.Generator().manual_seed(sampling.seed or 0)
        self.waiting.append(row)
        return row

    def cancel(self, row: TurnInFlight) -> None:
        """Drop a turn (its client went away); its slot is free at once."""
        if row in self.waiting:
            self.waiting.remove(row)
        elif self.running.get(row.slot) is row:
            self._leave(row)
        row.done = True

    @torch.inference_mode()
    def step(self) -> StepResult:
        """Admit waiting turns (one prefill forward), then one speculative step for all."""
        result = StepResult()
        joining = []
        while self.waiting and self.free:
            row = self.waiting.popleft()
            row.slot, row.reused = self._take_slot(row.prompt)
            self.running[row.slot] = row
            joining.append(row)
        if joining:
            self._guarded(joining, self._prefill, result)
        decoding = [self.running[slot] for slot in sorted(self.running)]
        decoding = [row for row in decoding if not row.done]
        if decoding:
            self._guarded(decoding, self._speculate, result)
        return result

    def run_alone(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> TurnInFlight:
        """Decode one turn to its end on an idle decoder (scripts, tests)."""
        if self.busy:
            raise RuntimeError("an idle decoder runs one turn alone; submit() and step() instead")
        row = self.submit(prompt_ids, sampling, on_step)
        while not row.done:
            self.step()
        if row.error is not None:
            raise row.error
        return row

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

    def _guarded(
        self,
        rows: list[TurnInFlight],
        work: Callable[[list[TurnInFlight]], tuple[list[TurnInFlight], IterationStats]],
        result: StepResult,
    ) -> None:
        """A fault in a batched forward fails every row in it, and only those."""
        try:
            finished, stats = work(rows)
        except Exception as err:
            for row in rows:
                if not row.done:
                    row.error = err
                    self._leave(row)
            result.finished += rows
            return
        result.finished += finished
        result.forwards.append(stats)

    def _until_stop(self, tokens: list[int]) -> list[int]:
        """A stop token ends the turn inside a step: what follows it is not emitted."""
        for i, token in enumerate(tokens):
            if token in self.stop_token_ids:
                return tokens[: i + 1]
        return tokens

    def _emit(self, row: TurnInFlight, new: list[int], drafted: int) -> bool:
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

    def _leave(self, row: TurnInFlight) -> None:
        row.done = True
        if self.running.get(row.slot) is row:
            del self.running[row.slot]
            self.drafter.release(row.slot)
            bisect.insort(self.free, row.slot)  # its rows stay, for a turn that continues them

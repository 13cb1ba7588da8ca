"""Drafters for the reference engine: they propose up to k tokens the target then verifies.

The engine decodes many turns at once, each in a numbered slot, and talks to a
`BatchDrafter`: `propose_batch(requests)` (one `DraftRequest` per row in flight: slot,
context, k, inputs), `accept_batch({slot: accepted})` after verification, `release(slot)`
when a turn leaves its slot. A drafter written for one sequence (`Drafter`, below) runs
unchanged at batch size 1 through `as_batch_drafter`.

The one-sequence interface is two calls per decoding step:

- `propose(context, k, inputs)`: up to k tokens continuing the accepted context (prompt and
  generated tokens so far). `inputs` carries what the target's last pass exposed (its
  captured hidden states, for the drafters that name `captured_layers`) and how this turn
  samples. The proposal holds the probabilities each token was drawn from when the drafter
  has any (`probs`, one distribution over the target vocabulary per token). A drafter
  without probabilities is deterministic: its distribution is one-hot on its choice, and
  speculative sampling treats it exactly so.
- `accept(n)`: n of the proposed tokens were accepted; the drafter rolls its own state
  (KV cache) back to the accepted context.

Kinds: `ngram` (prompt lookup, no model), `eagle3` (an EAGLE-3 head on the target's hidden
states, bench/engines/eagle3.py) and `draft_model` (a smaller causal LM with the target's
tokenizer).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

from bench.config import (
    DrafterConfig,
    DraftModelDrafterConfig,
    Eagle3DrafterConfig,
    NgramDrafterConfig,
    TargetConfig,
)
from bench.errors import BenchError

try:
    import torch
except ImportError:  # only the n-gram drafter runs without torch
    torch = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]
    probs: Any | None = None
    """A [len(tokens), vocab] tensor of draft probabilities, or None for one-hot."""


@dataclass(frozen=True)
class DraftInputs:
    """What the drafter gets besides the context."""

    start: int = 0
    """Context position of the first row of `hidden`."""
    hidden: Any | None = None
    """[n, C·H] target hidden states of `captured_layers`, concatenated, for context
    positions start .. start + n − 1 (the rows the target's last pass verified and the
    context kept; the newest context token has none yet). None if none were asked for."""
    temperature: float = 0.0
    """0: propose the drafter's argmax; above 0: sample and report `probs`."""
    generator: Any | None = None
    """The turn's torch.Generator, for sampling."""


class Drafter(Protocol):
    captured_layers: tuple[int, ...]
    """Indices into the target's `hidden_states` the drafter needs (empty: none)."""

    def propose(self, context: list[int], k: int, inputs: DraftInputs | None = None) -> Proposal:
        """Up to `k` tokens continuing `context` (fewer, or none, when it has no guess)."""
        ...

    def accept(self, accepted: int) -> None:
        """`accepted` of the last proposal's tokens were kept (plus the target's own token)."""
        ...


@dataclass(frozen=True)
class DraftRequest:
    """One row of a batched draft: the turn in `slot` continues `context` with ≤ k tokens."""

    slot: int
    context: list[int]
    k: int
    inputs: DraftInputs


class BatchDrafter(Protocol):
    captured_layers: tuple[int, ...]

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        """One proposal per request, in order."""
        ...

    def accept_batch(self, accepted: dict[int, int]) -> None:
        """Per slot, how many of its last proposal's tokens were kept."""
        ...

    def release(self, slot: int) -> None:
        """The slot's turn is over; its next `propose_batch` starts a new one."""
        ...


class OneRow:
    """A one-sequence `Drafter` as a `BatchDrafter` for batch size 1 (slot 0 only)."""

    def __init__(self, drafter: Drafter) -> None:
        self.drafter = drafter
        self.captured_layers = tuple(getattr(drafter, "captured_layers", ()))

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        return [self.drafter.propose(r.context, r.k, r.inputs) for r in requests]

    def accept_batch(self, accepted: dict[int, int]) -> None:
        for n in accepted.values():
            self.drafter.accept(n)

    def release(self, slot: int) -> None:
        pass  # a one-sequence drafter resets itself when a new context starts


def as_batch_drafter(drafter: Drafter | BatchDrafter, batch_size: int) -> BatchDrafter:
    if hasattr(drafter, "propose_batch"):
        return drafter  # type: ignore[return-value]
    if batch_size == 1:
        return OneRow(drafter)  # type: ignore[arg-type]
    raise BenchError(
        f"the {type(drafter).__name__} drafter proposes for one sequence at a time; "
        "run it with engine.batch_size 1"
    )


class NgramDrafter:
    """Prompt-lookup decoding: find the latest earlier occurrence of the context's last n
    tokens (n from `max_ngram` down to `min_ngram`) and propose what followed it. It keeps
    no state, so a batch is each row on its own."""

    captured_layers: tuple[int, ...] = ()

    def __init__(self, config: NgramDrafterConfig) -> None:
        self.max_ngram = config.max_ngram
        self.min_ngram = config.min_ngram

    def propose(self, context: list[int], k: int, inputs: DraftInputs | None = None) -> Proposal:
        length = len(context)
        if k <= 0:
            return Proposal([])
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if length <= n:
                continue
            suffix = context[-n:]
            # Latest start j < length - n (an earlier occurrence, not the suffix itself).
            for j in range(length - n - 1, -1, -1):
                if context[j : j + n] == suffix:
                    follow = context[j + n : j + n + k]
                    if follow:
                        return Proposal(follow)
        return Proposal([])

    def accept(self, accepted: int) -> None:
        pass

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        return [self.propose(r.context, r.k, r.inputs) for r in requests]

    def accept_batch(self, accepted: dict[int, int]) -> None:
        pass

    def release(self, slot: int) -> None:
        pass


def pick(logits: Any, inputs: DraftInputs) -> tuple[Any, Any | None]:
    """One draft token from logits [V']: argmax at temperature 0 (and no distribution),
    otherwise a sample from softmax(logits / T) and that distribution."""
    if inputs.temperature == 0:
        return logits.argmax(), None
    q = torch.softmax(logits.float() / inputs.temperature, dim=-1)
    return torch.multinomial(q.cpu(), 1, generator=inputs.generator)[0].to(q.device), q


def cache_argument(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); the name this one takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class DraftModelDrafter:
    """A smaller causal LM with the target's tokenizer, drafting k tokens one at a time over
    its own KV cache, which holds the accepted context plus its pending drafts."""

    captured_layers: tuple[int, ...] = ()

    def __init__(self, model: Any, target_vocab_size: int) -> None:
        self.model = model
        self.vocab = target_vocab_size
        self.device = next(model.parameters()).device
        self._cache_arg = cache_argument(model)
        self.cache: Any = None
        self.cached: list[int] = []  # the tokens whose rows the cache holds
        self.context_rows = 0

    def _logits(self, tokens: list[int]) -> Any:
        ids = torch.tensor([tokens], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: self.cache})
        self.cached += tokens
        logits = out.logits[0, -1, : self.vocab]  # a padded draft vocabulary is cut to the target's
        if logits.shape[0] < self.vocab:  # and a shorter one cannot propose the missing ids
            logits = torch.nn.functional.pad(
                logits, (0, self.vocab - logits.shape[0]), value=-torch.inf
            )
        return logits

    def propose(self, context: list[int], k: int, inputs: DraftInputs | None = None) -> Proposal:
        from transformers import DynamicCache

        inputs = inputs or DraftInputs()
        if k <= 0:
            return Proposal([])
        # Keep the cached rows the context still starts with (a new turn keeps none).
        keep = 0
        for a, b in zip(self.cached, context[:-1]):
            if a != b:
                break
            keep += 1
        if keep == 0:
            self.cache, self.cached = DynamicCache(), []
        elif keep < len(self.cached):
            self.cache.crop(-(len(self.cached) - keep))
            self.cached = self.cached[:keep]
        self.context_rows = len(context)
        logits = self._logits(context[keep:])
        tokens, probs = [], []
        for i in range(k):
            token, q = pick(logits, inputs)
            tokens.append(int(token))
            probs.append(q)
            if i < k - 1:  # the last draft is verified, never fed
                logits = self._logits([tokens[-1]])
        return Proposal(tokens, None if probs[0] is None else torch.stack(probs))

    def accept(self, accepted: int) -> None:
        # Rows of accepted drafts stay valid; later ones leave.
        keep = min(self.context_rows + accepted, len(self.cached))
        if self.cache is not None and keep < len(self.cached):
            self.cache.crop(-(len(self.cached) - keep))
            self.cached = self.cached[:keep]


class Eagle3Drafter:
    """An EAGLE-3 head: a context step over the rows the target just verified (their
    captured states through fc), then k draft steps feeding back the head's own output."""

    def __init__(self, head: Any, target_embedding: Any) -> None:
        self.head = head
        self.embed = head.embed_tokens if head.embed_tokens is not None else target_embedding
        self.captured_layers = head.spec.captured_layers
        self.vocab = head.spec.vocab_size
        self.kv: tuple[Any, Any] | None = None
        self.context_rows = 0  # draft-cache rows that belong to the accepted context

    def _crop(self, rows: int) -> None:
        if self.kv is not None:
            self.kv = (self.kv[0][:, :rows], self.kv[1][:, :rows])

    def propose(self, context: list[int], k: int, inputs: DraftInputs | None = None) -> Proposal:
        if inputs is None or inputs.hidden is None:
            raise BenchError("the eagle3 drafter needs the target's hidden states")
        start, n = inputs.start, inputs.hidden.shape[0]
        if start > self.context_rows or start + n + 1 != len(context):
            raise RuntimeError(f"eagle3 rows out of step: {start}+{n} for {len(context)} tokens")
        self._crop(start)  # a new turn starts at 0
        device = inputs.hidden.device
        # Context step: the state at position t is paired with token t + 1, RoPE position t.
        tokens = torch.tensor(context[start + 1 :], device=device)  # [n]
        positions = torch.arange(start, start + n, device=device)  # [n]
        f = self.head.fuse(inputs.hidden)  # [n, C·H_target] → [n, H]
        logits, g, self.kv = self.head(self.embed(tokens), f, positions, self.kv)
        self.context_rows = start + n
        drafts, probs = [], []
        logits, g = logits[-1], g[-1:]  # [V_draft], [1, H]
        for i in range(k):
            draft_id, q = pick(logits, inputs)
            token = self.head.target_ids(draft_id)
            drafts.append(int(token))
            if q is not None:  # the draft distribution, moved onto target ids
                probs.append(torch.zeros(self.vocab, device=q.device).index_add_(
                    0, self.head.target_ids(torch.arange(q.shape[0], device=q.device)), q
                ))  # fmt: skip
            if i < k - 1:  # later steps feed back g (no fc) at the next position
                position = torch.tensor([start + n + i], device=device)
                logits, g, self.kv = self.head(self.embed(token[None]), g, position, self.kv)
                logits = logits[-1]
        return Proposal(drafts, torch.stack(probs) if probs else None)

    def accept(self, accepted: int) -> None:
        # Draft rows were computed from the head's own g, not the target's states: drop them
        # all; the next propose reruns the accepted ones as context rows.
        self._crop(self.context_rows)


def draft_model_target(config: DraftModelDrafterConfig) -> TargetConfig:
    """A draft model is located and loaded exactly like a target."""
    return TargetConfig(
        name=config.hf_id or config.path or "draft model",
        path=config.path,
        hf_id=config.hf_id,
        revision=config.revision,
        gguf_file=config.gguf_file,
        dtype=config.dtype,
    )


def check_same_vocabulary(draft_tokenizer: Any, target_tokenizer: Any, name: str) -> None:
    draft_vocab, target_vocab = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if draft_vocab == target_vocab:
        return
    differ = sum(1 for t, i in draft_vocab.items() if target_vocab.get(t) != i)
    differ += sum(1 for t in target_vocab if t not in draft_vocab)
    raise BenchError(
        f"the draft model {name} does not share the target's tokenizer: {differ} tokens differ "
        f"(vocabulary sizes {len(draft_vocab)} and {len(target_vocab)}); a draft model must use "
        "the target's vocabulary, token for token"
    )


def build_drafter(
    config: DrafterConfig,
    target: Any = None,
    target_tokenizer: Any = None,
    device: str = "cpu",
) -> tuple[Drafter, dict[str, Any]]:
    """The drafter for `config`, and what the manifest records about it (kind, checkpoint
    hash). `target` (the loaded target model) and its tokenizer are needed by the model
    drafters, not by `ngram`."""
    if isinstance(config, NgramDrafterConfig):
        return NgramDrafter(config), config.model_dump()
    if isinstance(config, Eagle3DrafterConfig):
        from bench.engines.eagle3 import load_eagle3

        head, sha256 = load_eagle3(config.checkpoint, config.revision, target)
        info = {**config.model_dump(), "checkpoint_sha256": sha256}
        info["draft_vocab_size"] = head.spec.draft_vocab_size
        info["captured_layers"] = list(head.spec.captured_layers)
        return Eagle3Drafter(head, target.get_input_embeddings()), info
    assert isinstance(config, DraftModelDrafterConfig)
    from bench.conversation import load_tokenizer
    from bench.engines.reference import load_causal_lm

    as_target = draft_model_target(config)
    check_same_vocabulary(load_tokenizer(as_target), target_tokenizer, as_target.name)
    model, sha256 = load_causal_lm(as_target, device, role="draft model")
    info = {**config.model_dump(), "checkpoint_sha256": sha256}
    return DraftModelDrafter(model, target.config.vocab_size), info

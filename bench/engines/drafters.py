"""Drafters for the reference engine: they propose up to k tokens the target then verifies.

The engine decodes many turns at once, each in a numbered slot, and talks to a
`BatchDrafter`: `propose_batch(requests)` (one `DraftRequest` per row in flight: slot,
context, k, inputs), `accept_batch({slot: accepted})` after verification, `release(slot)`
when a turn leaves its slot. The model drafters keep one slot of draft KV cache per turn
and draft for all rows together: k draft tokens cost about k batched forwards of the
draft network, whatever the number of rows (`draft_rows`). A drafter written for one
sequence (`Drafter`, below) runs unchanged at batch size 1 through `as_batch_drafter`;
the built-in ones also answer the one-sequence calls, as a batch of one.

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
from collections.abc import Callable
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
        slots = getattr(drafter, "slots", batch_size)  # the model drafters' caches have slots
        if slots < batch_size:
            raise BenchError(
                f"the {type(drafter).__name__} drafter has {slots} slots for a batch of "
                f"{batch_size}; build it with slots={batch_size}"
            )
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


def draft_rows(
    ks: list[int],
    inputs: list[DraftInputs],
    logits: Any,
    feed: Callable[[list[int], Any], Any],
) -> list[tuple[list[int], list[Any]]]:
    """Up to ks[r] draft tokens for each row of a batch, one batched `feed` per draft
    position (so k positions cost k − 1 forwards whatever the number of rows).

    logits: [R, V'] each row's next-token logits after its context. Each row picks from its
    own (`pick`, with its own temperature and generator); `feed(rows, tokens)` runs the draft
    network on one token [len(rows)] for each of `rows` (indices into the batch: those that
    still draft) and returns their next logits. Returns per row its draft ids (in the
    network's vocabulary) and the distributions they were drawn from (None when greedy).
    """
    drafts: list[tuple[list[int], list[Any]]] = [([], []) for _ in ks]
    active = [r for r, k in enumerate(ks) if k > 0]
    logits = logits[active]
    while active:
        tokens = logits.argmax(dim=-1)  # [A]
        for j, r in enumerate(active):
            q = None
            if inputs[r].temperature > 0:
                tokens[j], q = pick(logits[j], inputs[r])
            drafts[r][1].append(q)
        for r, token in zip(active, tokens.tolist()):
            drafts[r][0].append(token)
        # Rows with drafts still to make feed theirs; each row's last draft is verified by
        # the target, never fed.
        keep = [j for j, r in enumerate(active) if ks[r] > len(drafts[r][0])]
        active = [active[j] for j in keep]
        if active:
            logits = feed(active, tokens[keep])
    return drafts


def stacked(probs: list[Any]) -> Any | None:
    """[k, V'] from k distributions; None for greedy drafts (or none at all)."""
    return torch.stack(probs) if probs and probs[0] is not None else None


class OneSequence:
    """The one-sequence `Drafter` calls of a `BatchDrafter`: a batch of one, in slot 0."""

    def propose(self, context: list[int], k: int, inputs: DraftInputs | None = None) -> Proposal:
        request = DraftRequest(0, context, k, inputs or DraftInputs())
        return self.propose_batch([request])[0]  # type: ignore[attr-defined]

    def accept(self, accepted: int) -> None:
        self.accept_batch({0: accepted})  # type: ignore[attr-defined]


def cache_argument(model: Any) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); the name this one takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class DraftModelDrafter(OneSequence):
    """A smaller causal LM with the target's tokenizer, drafting k tokens one at a time over
    its own slot KV cache (bench/engines/batching.py): per slot, the accepted context plus
    its pending drafts. A batch feeds every row its uncached context in one forward, then
    one token per row and forward."""

    captured_layers: tuple[int, ...] = ()

    def __init__(self, model: Any, target_vocab_size: int, slots: int = 1) -> None:
        from bench.engines.batching import BatchedLM

        self.lm = BatchedLM(model, slots, cache_argument(model))
        self.vocab = target_vocab_size
        self.slots = slots
        self.context_rows = [0] * slots

    def _feed(self, slots: list[int], blocks: list[list[int]]) -> Any:
        """Feed blocks[r] after slot r's cached rows; the next-token logits [R, V]."""
        logits, _ = self.lm.forward(slots, blocks, last_only=True)
        for slot, block in zip(slots, blocks):
            self.lm.commit(slot, len(block))
        logits = torch.cat(logits)[:, : self.vocab]  # a padded draft vocabulary is cut
        if logits.shape[1] < self.vocab:  # and a shorter one cannot propose the missing ids
            logits = torch.nn.functional.pad(
                logits, (0, self.vocab - logits.shape[1]), value=-torch.inf
            )
        return logits

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        proposals = [Proposal([])] * len(requests)
        order = sorted(
            (i for i, r in enumerate(requests) if r.k > 0), key=lambda i: requests[i].slot
        )
        if not order:
            return proposals
        rows = [requests[i] for i in order]  # ascending slots, as the cache wants
        blocks = []
        for row in rows:
            # Keep the cached rows the context still starts with (a new turn keeps none).
            keep = self.lm.shared_prefix(row.slot, row.context[:-1])
            self.lm.reset(row.slot, keep)
            self.context_rows[row.slot] = len(row.context)
            blocks.append(row.context[keep:])
        slots = [row.slot for row in rows]
        logits = self._feed(slots, blocks)  # ragged: each row's uncached context

        def feed(active: list[int], tokens: Any) -> Any:
            return self._feed([slots[r] for r in active], [[t] for t in tokens.tolist()])

        drafts = draft_rows([r.k for r in rows], [r.inputs for r in rows], logits, feed)
        for i, (tokens, probs) in zip(order, drafts):
            proposals[i] = Proposal(tokens, stacked(probs))
        return proposals

    def accept_batch(self, accepted: dict[int, int]) -> None:
        for slot, n in accepted.items():
            # Rows of accepted drafts stay valid; later ones leave.
            self.lm.reset(slot, min(self.context_rows[slot] + n, len(self.lm.tokens[slot])))

    def release(self, slot: int) -> None:
        self.lm.reset(slot)
        self.context_rows[slot] = 0


class Eagle3Drafter(OneSequence):
    """An EAGLE-3 head: a context step over the rows the target just verified (their
    captured states through fc), then k draft steps feeding back the head's own output.
    The head's KV lives in a slot cache, one slot per turn; a batch runs every row's context
    step in one forward, then one draft step for all rows per draft position."""

    def __init__(self, head: Any, target_embedding: Any, slots: int = 1) -> None:
        self.head = head
        self.embed = head.embed_tokens if head.embed_tokens is not None else target_embedding
        self.captured_layers = head.spec.captured_layers
        self.vocab = head.spec.vocab_size
        self.slots = slots
        self.cache = head.slot_cache(slots)
        self.context_rows = [0] * slots  # per slot, cache rows that belong to the context

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        if not requests:
            return []
        order = sorted(range(len(requests)), key=lambda i: requests[i].slot)
        rows = [requests[i] for i in order]  # ascending slots, as the cache wants
        for row in rows:
            if row.inputs.hidden is None:
                raise BenchError("the eagle3 drafter needs the target's hidden states")
            start, n = row.inputs.start, row.inputs.hidden.shape[0]
            if start > self.context_rows[row.slot] or start + n + 1 != len(row.context):
                raise RuntimeError(
                    f"eagle3 rows out of step: {start}+{n} for {len(row.context)} tokens"
                )
            self.cache.reset(row.slot, start)  # a new turn starts at 0
        slots = [row.slot for row in rows]
        widths = [row.inputs.hidden.shape[0] for row in rows]
        device = rows[0].inputs.hidden.device
        pad = torch.nn.utils.rnn.pad_sequence
        # Context step: the state at position t is paired with token t + 1, RoPE position t
        # (the slot's length, `start`, onwards: cache.begin's positions).
        tokens = pad(
            [torch.tensor(r.context[r.inputs.start + 1 :]) for r in rows], batch_first=True
        )
        hidden = pad([r.inputs.hidden for r in rows], batch_first=True)  # [R, q, C·H_target]
        mask, positions = self.cache.begin(slots, widths)
        last = torch.tensor(widths, device=device) - 1
        f = self.head.fuse(hidden)  # [R, q, H]
        logits, g = self.head(self.embed(tokens.to(device)), f, positions, mask, self.cache, last)
        for slot, n in zip(slots, widths):
            self.cache.commit(slot, n)
            self.context_rows[slot] = self.cache.lengths[slot]

        def feed(active: list[int], draft_ids: Any) -> Any:
            """Later steps feed back g (no fc) at the next position; the draft rows stay in
            the cache until `accept_batch`."""
            active_slots = [slots[r] for r in active]
            mask, positions = self.cache.begin(active_slots, [1] * len(active))
            embeds = self.embed(self.head.target_ids(draft_ids))[:, None]  # [A, 1, H]
            zeros = torch.zeros(len(active), dtype=torch.long, device=device)
            logits, g_next = self.head(embeds, g[active, None], positions, mask, self.cache, zeros)
            g[active] = g_next  # each row's newest g, for its next draft step
            for slot in active_slots:
                self.cache.commit(slot, 1)
            return logits

        drafts = draft_rows([r.k for r in rows], [r.inputs for r in rows], logits, feed)
        proposals = [Proposal([])] * len(requests)
        to_target = self.head.target_ids(
            torch.arange(self.head.spec.draft_vocab_size, device=device)
        )
        for i, (ids, probs) in zip(order, drafts):
            q = stacked(probs)  # [k, V_draft]: moved onto target ids
            if q is not None:
                q = torch.zeros(len(ids), self.vocab, device=q.device).index_add_(1, to_target, q)
            proposals[i] = Proposal(to_target[ids].tolist() if ids else [], q)
        return proposals

    def accept_batch(self, accepted: dict[int, int]) -> None:
        # Draft rows were computed from the head's own g, not the target's states: drop them
        # all; the next propose reruns the accepted ones as context rows.
        for slot in accepted:
            self.cache.reset(slot, self.context_rows[slot])

    def release(self, slot: int) -> None:
        self.cache.reset(slot)
        self.context_rows[slot] = 0


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


class NoDrafter:
    """Speculation off (`--draft-len 0`): proposes nothing and computes nothing, so the
    decoder verifies only its own next token each step, through the same loop."""

    captured_layers: tuple[int, ...] = ()

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        return [Proposal([]) for _ in requests]

    def accept_batch(self, accepted: dict[int, int]) -> None:
        pass

    def release(self, slot: int) -> None:
        pass


def build_drafter(
    config: DrafterConfig,
    target: Any = None,
    target_tokenizer: Any = None,
    device: str = "cpu",
    batch_size: int = 1,
) -> tuple[BatchDrafter, dict[str, Any]]:
    """The drafter for `config`, and what the manifest records about it (kind, checkpoint
    hash). `target` (the loaded target model) and its tokenizer are needed by the model
    drafters, not by `ngram`; `batch_size` is how many turns the engine decodes at once."""
    if isinstance(config, NgramDrafterConfig):
        return NgramDrafter(config), config.model_dump()
    if isinstance(config, Eagle3DrafterConfig):
        from bench.engines.eagle3 import load_eagle3

        head, sha256 = load_eagle3(config.checkpoint, config.revision, target)
        info = {**config.model_dump(), "checkpoint_sha256": sha256}
        info["draft_vocab_size"] = head.spec.draft_vocab_size
        info["captured_layers"] = list(head.spec.captured_layers)
        return Eagle3Drafter(head, target.get_input_embeddings(), batch_size), info
    assert isinstance(config, DraftModelDrafterConfig)
    from bench.conversation import load_tokenizer
    from bench.target import load_causal_lm

    as_target = draft_model_target(config)
    check_same_vocabulary(load_tokenizer(as_target), target_tokenizer, as_target.name)
    model, sha256 = load_causal_lm(as_target, device, role="draft model")
    info = {**config.model_dump(), "checkpoint_sha256": sha256}
    return DraftModelDrafter(model, target.config.vocab_size, batch_size), info

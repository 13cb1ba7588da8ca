"""Many sequences through one forward: a slot KV cache with ragged per-row offsets.

The batched reference engine keeps up to B turns in flight. Each lives in a *slot*: row s of
a preallocated key/value buffer [slots, kv_heads, capacity, head_dim] per layer, holding
that turn's context from position 0 to its own length. A forward takes any subset of slots,
each with its own new tokens (padded to the widest row), and writes row r's token i at
`length_r + i` of its slot. Rows therefore never share positions, so nothing has to be
shifted when rows join, leave or accept different numbers of drafts:

- rejected drafts are not removed: the slot's length simply does not advance over them, and
  the next step overwrites them;
- padding tokens write beyond the row's length too, and are never visible;
- the mask lets query i of row r see keys 0 .. length_r + i of its own slot, nothing else
  (causal, and blind to whatever stale rows lie beyond);
- RoPE positions are `length_r + i`, exactly those of the one-row engine.

A forward through this cache computes what transformers' DynamicCache computes, row by
row; the logits differ only by float rounding (another attention kernel, and batched matrix
products whose blocking depends on the number of rows), which can flip a near-tie.

Attention over these masked slots uses `slot_attention`, registered with transformers as
the `bench_slots` implementation: a query block of a few tokens against a long cache is
two batched matrix products with the grouped query heads folded into rows, which on CPU is
several times faster than SDPA's kernel with a mask (and needs no copy of K/V per query
head). Long query blocks (prefill) go through SDPA with `enable_gqa`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

ATTENTION = "bench_slots"
_LONG_QUERY = 32  # query blocks longer than this (prefill) use SDPA


def slot_attention(
    module: Any,
    query: torch.Tensor,  # [R, Hq, q, d]
    key: torch.Tensor,  # [R, Hkv, T, d]
    value: torch.Tensor,  # [R, Hkv, T, d]
    attention_mask: torch.Tensor | None,  # [R, 1, q, T] bool, True = visible
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for the slot cache; returns [R, q, Hq, d] as transformers expects."""
    rows, heads, q, d = query.shape
    kv_heads, t = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    if attention_mask is None or attention_mask.dtype != torch.bool:
        # Not a slot-cache forward (e.g. plain generate() on the same model): SDPA's own.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if q > _LONG_QUERY:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    group = heads // kv_heads
    # Query heads h = kv·group + j share kv head kv: fold (j, i) into rows of one product.
    scores = torch.matmul(query.reshape(rows, kv_heads, group * q, d), key.transpose(-1, -2))
    scores = scores.view(rows, kv_heads, group, q, t).mul_(scale)
    scores.masked_fill_(~attention_mask[:, :, None], float("-inf"))  # [R, 1, 1, q, T]
    probs = torch.softmax(scores, dim=-1).view(rows, kv_heads, group * q, t)
    out = torch.matmul(probs, value).view(rows, heads, q, d)
    return out.transpose(1, 2).contiguous(), None


def register_slot_attention() -> None:
    """Make `bench_slots` an attention implementation; its masks, where transformers builds
    them (any forward not given the slot cache's), are SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, slot_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


class SlotCache:
    """Per-slot key/value rows of every layer; duck-types transformers' `Cache.update`.

    Usage per forward: `begin(slots, widths)` fixes which slots take part and how many new
    tokens each brings; the model's layers then call `update`; afterwards the caller
    `commit`s how many of the new rows each slot keeps.
    """

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        capacity: int = 256,
    ) -> None:
        self.shape = (slots, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [self._empty(capacity) for _ in range(layers)]
        self.values = [self._empty(capacity) for _ in range(layers)]
        self.lengths = [0] * slots
        self._rows: torch.Tensor | None = None

    def _empty(self, capacity: int) -> torch.Tensor:
        slots, kv_heads, head_dim = self.shape
        return torch.zeros(
            slots, kv_heads, capacity, head_dim, dtype=self.dtype, device=self.device
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _grow(self, needed: int) -> None:
        """Room for `needed` positions per slot: reallocate, a quarter more than asked."""
        capacity, old = -(-(needed + needed // 4) // 128) * 128, self.capacity
        for layer in range(len(self.keys)):
            for store in (self.keys, self.values):
                grown = self._empty(capacity)
                grown[:, :, :old] = store[layer]
                store[layer] = grown

    def begin(self, slots: Sequence[int], widths: Sequence[int]) -> tuple[Any, Any]:
        """Prepare a forward over `slots` (ascending), each with widths[r] new tokens
        (the block is padded to the widest). Returns (mask [R,1,q,T], positions [R,q])."""
        q = max(widths)
        offsets = torch.tensor([self.lengths[s] for s in slots], device=self.device)
        positions = offsets[:, None] + torch.arange(q, device=self.device)  # [R, q]
        end = int(positions[:, -1].max()) + 1
        if end > self.capacity:
            self._grow(end)
        keys = torch.arange(end, device=self.device)
        self.mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # [R, 1, q, T]
        self.positions = positions
        self._end = end
        self._slots = list(slots)
        rows = torch.tensor(self._slots, device=self.device)
        # A contiguous run of slots reads its cache as a view; any other subset copies.
        first = self._slots[0]
        self._view = self._slots == list(range(first, first + len(self._slots)))
        self._rows = rows
        self._write_rows = rows[:, None].expand_as(positions)
        return self.mask, positions

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the block's keys/values [R, Hkv, q, d] at each row's positions; return
        every layer row the block's queries may attend to, [R, Hkv, T, d]."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._write_rows, :, self.positions] = key.transpose(1, 2).to(self.dtype)
        values[self._write_rows, :, self.positions] = value.transpose(1, 2).to(self.dtype)
        if self._view:
            first, last = self._slots[0], self._slots[-1] + 1
            return keys[first:last, :, : self._end], values[first:last, :, : self._end]
        return keys[self._rows, :, : self._end], values[self._rows, :, : self._end]

    def commit(self, slot: int, kept: int) -> None:
        """`kept` of the slot's new rows stay in its context (the rest are dropped)."""
        self.lengths[slot] += kept

    def reset(self, slot: int, length: int = 0) -> None:
        """The slot's context is cut to `length` rows (0: a new sequence)."""
        self.lengths[slot] = length


def model_kv_layout(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a transformers decoder-only model."""
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.num_hidden_layers, kv_heads, head_dim


class BatchedLM:
    """A transformers causal LM run over a slot cache: ragged blocks of new tokens per slot
    in one forward, returning per-row logits (and captured hidden states).

    It knows which token each committed row of a slot holds (`tokens`), so a caller can
    keep the rows a new context shares with the old one (`shared_prefix`) and feed only the
    rest: rows stay in a slot until `reset` cuts them, whoever used the slot last.
    """

    def __init__(self, model: Any, slots: int, cache_argument: str) -> None:
        register_slot_attention()
        model.set_attn_implementation(ATTENTION)
        self.model = model
        self.parameter = next(model.parameters())
        layers, kv_heads, head_dim = model_kv_layout(model)
        self.cache = SlotCache(
            layers, slots, kv_heads, head_dim, self.parameter.dtype, self.parameter.device
        )
        self._cache_arg = cache_argument
        self.tokens: list[list[int]] = [[] for _ in range(slots)]
        """Per slot, the token of each committed KV row."""
        self._fed: dict[int, Sequence[int]] = {}  # the last forward's block per slot

    def commit(self, slot: int, kept: int) -> None:
        """The first `kept` tokens the last forward fed this slot stay in its context."""
        self.cache.commit(slot, kept)
        self.tokens[slot] += self._fed[slot][:kept]

    def reset(self, slot: int, length: int = 0) -> None:
        """Cut the slot's context to its first `length` rows (0: a new sequence)."""
        self.cache.reset(slot, length)
        del self.tokens[slot][length:]

    def shared_prefix(self, slot: int, tokens: Sequence[int]) -> int:
        """How many of the slot's rows hold `tokens`' first tokens."""
        return len(os.path.commonprefix([self.tokens[slot], list(tokens)]))

    def forward(
        self,
        slots: Sequence[int],
        tokens: Sequence[Sequence[int]],
        captured: tuple[int, ...] = (),
        last_only: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Feed tokens[r] after slot r's context. Returns per row the logits [n_r, V] (only
        the last row, [1, V], with `last_only`: a prefill needs no more, and a long block's
        logits are large) and, when `captured` names hidden-state indices, their
        concatenation [n_r, C·H]."""
        widths = [len(t) for t in tokens]
        q = max(widths)
        device = self.parameter.device
        # transformers' logits_to_keep: the lm_head runs only where logits are used (it is
        # a fifth of a small model's work per token, and padding can be a third of a block).
        keep: Any = 0  # every position
        if last_only:  # [R, 1]: each row's last token
            keep = torch.tensor([[n - 1] for n in widths], device=device)
        elif min(widths) < q:  # [R, q] bool: the real tokens, flattened in row order
            keep = torch.arange(q)[None, :] < torch.tensor(widths)[:, None]
            keep = keep.to(device)
        block = torch.zeros(len(slots), q, dtype=torch.long)  # padding: token 0, never seen
        for r, row in enumerate(tokens):
            block[r, : len(row)] = torch.tensor(row)
        mask, positions = self.cache.begin(slots, widths)
        self._fed = dict(zip(slots, tokens))
        out = self.model(
            input_ids=block.to(device),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=bool(captured),
            logits_to_keep=keep,
            **{self._cache_arg: self.cache},
        )
        if last_only:
            logits = list(out.logits.unbind(0))  # [R, 1, V] → [1, V] each
        elif isinstance(keep, torch.Tensor):
            logits = list(out.logits.split(widths))  # [Σn, V] → [n_r, V] each
        else:
            logits = list(out.logits.unbind(0))  # [R, q, V], no padding
        if not captured:
            return logits, None
        states = torch.cat([out.hidden_states[i] for i in captured], dim=-1)  # [R, q, C·H]
        return logits, [states[r, :n] for r, n in enumerate(widths)]

"""The head being trained: its config, its initialisation from the target, and the
training-time test (TTT) forward with its loss.

The head is the reference engine's own `Eagle3Head` (bench/engines/eagle3.py), built from
the config.json the export writes, so the weights trained are by construction the ones the
engine loads. Only the attention differs: the engine attends over a KV cache row by row,
training unrolls T draft steps over whole sequences at once.

Training-time test, for a sequence x_0 .. x_{n-1} and captured target states s_t:

- step 0, position t: input token x_{t+1}, hidden f_t = fc(s_t), RoPE position t; it
  predicts x_{t+2}, i.e. matches the target's distribution at position t + 1;
- step j > 0, position t: input token x_{t+1+j}, hidden g_t^{(j-1)} (the head's own output
  of step j − 1 at t, no fc), RoPE position t + j; it matches the target at t + 1 + j.
  It attends to step 0's keys at positions <= t (causal) and to its own and earlier steps'
  keys at position t only (the diagonal), which is exactly what a draft row sees at
  inference: the context's rows, then the draft rows before it, at positions t + 1 .. t + j.

Loss of step j: cross-entropy of the head's draft-vocabulary distribution against the
target's softmax over the draft vocabulary (its logits at those ids), on positions whose
predicted token is an answer token and whose target argmax lies in the draft vocabulary;
steps weighted decay^j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.engines.eagle3 import Eagle3Head, read_spec


def _rope_theta(target_config: Any) -> float:
    params = getattr(target_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(target_config, "rope_theta", 10000.0))


def head_config(target_config: Any, draft_vocab_size: int) -> dict[str, Any]:
    """config.json of a head for this target: one Llama layer of the target's width, heads
    and MLP, the target's RoPE theta (written out: a head's own default would be 10000).

    No explicit captured-layer ids are written: the head reads the default every engine
    assumes (`hidden_states[2], [L//2], [L − 3]`), and the id conventions differ by one
    between publishers (eagle_config's "output of layer X" against top-level indices, which
    llama.cpp's converter takes as they are)."""
    c = target_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": c.rms_norm_eps,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": _rope_theta(c),
        "vocab_size": c.vocab_size,
        "draft_vocab_size": draft_vocab_size,
        "target_hidden_size": c.hidden_size,
        "norm_before_residual": False,  # written out: converters' defaults differ
        "tie_word_embeddings": False,
        "bos_token_id": getattr(c, "bos_token_id", None),
        "eos_token_id": getattr(c, "eos_token_id", None),
        "torch_dtype": "float16",
    }


INITS = ("target", "random")


def build_head(
    target: Any, used: list[int], seed: int, init: str = "target"
) -> tuple[Eagle3Head, dict[str, Any]]:
    """A head, float32, in training mode: initialised from the target (`init_from_target`)
    or, with `init="random"`, as PyTorch initialises its layers (norms at one), the EAGLE
    authors' start."""
    from bench.eagle3_train.vocab import mappings

    config = head_config(target.config, len(used))
    spec = read_spec(config, target.config, "the head being trained")
    torch.manual_seed(seed)
    head = Eagle3Head(spec, own_embedding=False).float()
    d2t, _ = mappings(used, target.config.vocab_size)
    head.d2t.copy_(d2t)
    if init == "target":
        init_from_target(head, target, used)
    elif init != "random":
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    return head.train(), config


@torch.no_grad()
def init_from_target(head: Eagle3Head, target: Any, used: list[int]) -> None:
    """Start from the target's own weights where the shapes allow.

    - The layer: the target's last decoder layer. q/k/v take cat(embedding, hidden): the
      hidden half gets the target layer's weights (the hidden state is what that layer
      reads), the embedding half keeps its random init (std 0.02), so the token enters
      from the start but does not drown the copied path. `hidden_norm` is the target
      layer's input norm; `input_layernorm` the target's first layer's input norm (the one
      that sees token embeddings in the target).
    - fc: identity on the highest captured state, zero on the other two: f starts as that
      state (the output of layer L − 4), as if the copied layer ran just after it.
    - norm and lm_head: the target's final norm and its lm_head rows of the draft ids.
    """
    layers = target.model.layers
    last, first = layers[-1], layers[0]
    h = head.spec.hidden_size
    for name in ("q_proj", "k_proj", "v_proj"):
        ours, theirs = getattr(head.layer.self_attn, name), getattr(last.self_attn, name)
        ours.weight[:, h:] = theirs.weight.float()
        ours.weight[:, :h].normal_(0.0, 0.02)
    head.layer.self_attn.o_proj.weight.copy_(last.self_attn.o_proj.weight)
    head.layer.mlp.load_state_dict(last.mlp.state_dict())
    head.layer.post_attention_layernorm.weight.copy_(last.post_attention_layernorm.weight)
    head.layer.hidden_norm.weight.copy_(last.input_layernorm.weight)
    head.layer.input_layernorm.weight.copy_(first.input_layernorm.weight)
    head.fc.weight.zero_()
    ht = head.spec.target_hidden_size
    head.fc.weight[:, -ht:] = torch.eye(h, ht)
    head.norm.weight.copy_(target.model.norm.weight)
    head.lm_head.weight.copy_(target.lm_head.weight[torch.tensor(used)])


@dataclass
class Batch:
    """Padded sequences (right padding) and the per-position data of the loss."""

    input_ids: torch.Tensor  # [B, n] long
    hidden: torch.Tensor  # [B, n, C·Ht] captured states
    target_logits: torch.Tensor  # [B, n, V_draft] the target's logits at the draft ids
    target_argmax: torch.Tensor  # [B, n] long, the target's argmax over its whole vocabulary
    answer: (
        torch.Tensor
    )  # [B, n] bool: position u predicts an answer token (u >= P − 1, u <= len − 2)


def make_batch(samples: list[dict[str, torch.Tensor]], lm_rows: torch.Tensor) -> Batch:
    """Stack captured samples (capture.py) into a Batch; lm_rows = the target's lm_head rows
    of the draft ids [V_draft, H]."""
    n = max(len(s["input_ids"]) for s in samples)
    b = len(samples)
    width = samples[0]["hidden"].shape[-1]
    input_ids = torch.zeros(b, n, dtype=torch.long)
    hidden = torch.zeros(b, n, width)
    final = torch.zeros(b, n, lm_rows.shape[1])
    argmax = torch.full((b, n), -1, dtype=torch.long)
    answer = torch.zeros(b, n, dtype=torch.bool)
    for r, s in enumerate(samples):
        length, start = len(s["input_ids"]), int(s["start"][0])
        input_ids[r, :length] = s["input_ids"].long()
        hidden[r, :length] = s["hidden"]
        final[r, start:length] = s["final"]
        argmax[r, start:length] = s["argmax"].long()
        answer[r, start : length - 1] = True
    with torch.no_grad():
        target_logits = final @ lm_rows.T
    return Batch(input_ids, hidden, target_logits, argmax, answer)


def _shift(x: torch.Tensor, by: int, fill: float | int = 0) -> torch.Tensor:
    """x[:, t + by] at t (dim 1), `fill` past the end."""
    if by == 0:
        return x
    pad = torch.full_like(x[:, :by], fill)
    return torch.cat([x[:, by:], pad], dim=1)


def _attention(
    head: Eagle3Head,
    x: torch.Tensor,  # [B, n, 2H] cat(input_layernorm(embed), hidden_norm(hidden))
    positions: torch.Tensor,  # [n] RoPE positions of this step
    keys: list[tuple[torch.Tensor, torch.Tensor]],  # earlier steps' (k, v) [B, heads, n, d]
) -> torch.Tensor:
    """This step's attention output [B, n, heads·d]; appends its own (k, v) to `keys`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn, layer = head.layer.self_attn, head.layer
    b, n = x.shape[:2]
    q = attn.q_proj(x).view(b, n, layer.heads, layer.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, n, layer.kv_heads, layer.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, n, layer.kv_heads, layer.head_dim).transpose(1, 2)
    cos, sin = head.rotary(x, positions[None].expand(b, n))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    group = layer.heads // layer.kv_heads
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # [B, heads, n, d]
    keys.append((k, v))
    scale = layer.head_dim**-0.5
    if len(keys) == 1:  # step 0: plain causal attention over the sequence
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return out.transpose(1, 2).reshape(b, n, -1)
    k0, v0 = keys[0]
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    scores = (q @ k0.transpose(-1, -2)) * scale  # [B, heads, n, n]
    scores = scores.masked_fill(~causal, float("-inf"))
    diagonal = [(q * ki).sum(-1, keepdim=True) * scale for ki, _ in keys[1:]]  # [B,heads,n,1]
    probs = torch.softmax(torch.cat([scores, *diagonal], dim=-1), dim=-1)
    out = probs[..., :n] @ v0
    for i, (_, vi) in enumerate(keys[1:]):
        out = out + probs[..., n + i : n + i + 1] * vi
    return out.transpose(1, 2).reshape(b, n, -1)


def ttt_outputs(
    head: Eagle3Head,
    embedding: torch.Tensor,  # [V, H] the target's (frozen)
    input_ids: torch.Tensor,  # [B, n]
    hidden: torch.Tensor,  # [B, n, C·Ht] captured target states
    steps: int,
) -> list[torch.Tensor]:
    """g of every TTT step, [B, n, H] each: step j's row t is the draft made at RoPE
    position t + j from context 0..t with tokens x_{t+1} .. x_{t+1+j} drafted before it."""
    layer = head.layer
    n = input_ids.shape[1]
    keys: list[tuple[torch.Tensor, torch.Tensor]] = []
    hidden_in = head.fuse(hidden)  # f [B, n, H] for step 0
    outputs = []
    for j in range(steps):
        tokens = _shift(input_ids, 1 + j)  # x_{t+1+j}
        x = torch.cat(
            [layer.input_layernorm(embedding[tokens]), layer.hidden_norm(hidden_in)], dim=-1
        )
        positions = torch.arange(n) + j
        h = hidden_in + layer.self_attn.o_proj(_attention(head, x, positions, keys))
        g = h + layer.mlp(layer.post_attention_layernorm(h))  # [B, n, H]
        outputs.append(g)
        hidden_in = g  # later steps feed back g, no fc
    return outputs


def ttt_forward(
    head: Eagle3Head,
    embedding: torch.Tensor,  # [V, H] the target's (frozen)
    t2d: torch.Tensor,  # [V] bool
    batch: Batch,
    steps: int,
    decay: float,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The weighted TTT loss and, per step, counts for the metrics: loss sum, positions,
    and top-1 agreements with the target's argmax (all answer positions, out-of-vocabulary
    argmaxes counting as misses)."""
    to_target = head.target_ids(torch.arange(head.spec.draft_vocab_size))
    total = torch.zeros(())
    stats: dict[str, Any] = {"loss_sum": [], "loss_n": [], "agree": [], "answer_n": []}
    chain = torch.ones_like(batch.answer)  # [B, n]: steps 0..j all agreed at position t
    run = torch.zeros(batch.answer.shape)  # [B, n]: how many leading steps agreed
    outputs = ttt_outputs(head, embedding, batch.input_ids, batch.hidden, steps)
    for j, g in enumerate(outputs):
        # Targets at u = t + 1 + j.
        answer = _shift(batch.answer, 1 + j, False)
        argmax = _shift(batch.target_argmax, 1 + j, -1)
        in_vocab = answer & t2d[argmax.clamp_min(0)]
        logits = head.lm_head(head.norm(g[answer]))  # [M, V_draft], answer positions only
        target = torch.softmax(_shift(batch.target_logits, 1 + j)[answer], dim=-1)
        keep = in_vocab[answer]
        per_position = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)  # [M]
        loss_sum = per_position[keep].sum()
        count = int(keep.sum())
        if count:
            total = total + decay**j * loss_sum / count
        agree = torch.zeros_like(answer)
        agree[answer] = to_target[logits.argmax(-1)] == argmax[answer]
        chain = chain & agree
        run += chain
        stats["loss_sum"].append(float(loss_sum.detach()))
        stats["loss_n"].append(count)
        stats["agree"].append(int(agree.sum()))
        stats["answer_n"].append(int(answer.sum()))
    # Acceptance proxy at k = steps, per position: 1 + the run of agreeing steps from step
    # 0, where every step had a target (teacher forcing feeds the true tokens, which are
    # the drafts a verification accepted up to the first miss).
    valid = _shift(batch.answer, 1, False) & _shift(batch.answer, steps, False)
    stats["al_positions"] = int(valid.sum())
    stats["al_sum"] = float((1 + run)[valid].sum())
    return total, stats

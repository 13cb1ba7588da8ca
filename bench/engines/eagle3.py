"""EAGLE-3 draft heads (Llama-style) for the reference engine: the model, the loader, the
checks against the target.

The architecture (docs/engines.md, "EAGLE-3 heads"): one decoder layer whose attention takes
`cat(input_layernorm(embed(token)), hidden_norm(f))`, where `f` is `fc` of the target's
captured hidden states on a context row and the head's own previous output `g` on a draft
row; logits over a reduced draft vocabulary mapped to target ids by `d2t`. Checkpoints come
from the EAGLE authors and SpecForge (`midlayer.` prefix), Model Optimizer and the
speculators format (`layers.0.` prefix). Heads of another architecture (DeepSeek-V3 / MLA,
like NVIDIA's Kimi head) are refused by name rather than mis-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.engines.batching import SlotCache, slot_attention
from bench.errors import BenchError
from bench.target import WEIGHT_PATTERNS, checkpoint_sha256, weight_files

# Architectures of Llama-style heads as the publishers name them (a plain LlamaForCausalLM
# name passes here; its layer count and weight shapes are then checked like any head's).
LLAMA_STYLE = {
    "LlamaForCausalLMEagle3",
    "Eagle3Speculator",
    "Eagle3DraftModel",
    "EagleModel",
    "LlamaForCausalLM",
}
_MLA_CONFIG_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim")
_MLA_WEIGHTS = ("kv_a_proj_with_mqa", "q_a_proj", "kv_b_proj")


@dataclass(frozen=True)
class Eagle3Spec:
    """What a head's config.json says, resolved against the target it will draft for."""

    hidden_size: int
    target_hidden_size: int
    vocab_size: int
    draft_vocab_size: int
    captured_layers: tuple[int, ...]
    """Indices into the target's `hidden_states` (0 = embeddings), low → mid → high."""
    captured_from: str
    """Where `captured_layers` came from: default, eagle_config (layer ids), top-level ids."""
    norm_before_residual: bool
    norm_before_fc: bool
    fc_norm: bool
    norm_output: bool
    llama: dict[str, Any]
    """The fields a transformers LlamaConfig takes (heads, head_dim, rope, eps, mlp)."""


def default_captured_layers(num_target_layers: int) -> tuple[int, ...]:
    """Outputs of layers 1, L//2 − 1, L − 4, i.e. `hidden_states[2], [L//2], [L − 3]`."""
    n = num_target_layers
    return (2, n // 2, n - 3)


def read_spec(config: dict[str, Any], target_config: Any, source: str) -> Eagle3Spec:
    """Resolve a head's config against the target's; every mismatch is one clear sentence."""
    refuse_unsupported(config, (), source)
    # The speculators format nests the layer's settings; its top level overrides.
    layer = {**config.get("transformer_layer_config", {}), **config}
    layer.pop("transformer_layer_config", None)
    n_target = target_config.num_hidden_layers
    eagle = config.get("eagle_config") or {}
    if eagle.get("eagle_aux_hidden_state_layer_ids") is not None:
        # "output of layer X" is hidden_states[X + 1].
        captured = tuple(int(x) + 1 for x in eagle["eagle_aux_hidden_state_layer_ids"])
        captured_from = "eagle_config.eagle_aux_hidden_state_layer_ids (layer ids, + 1)"
    elif config.get("eagle_aux_hidden_state_layer_ids") is not None:
        captured = tuple(int(x) for x in config["eagle_aux_hidden_state_layer_ids"])
        captured_from = "eagle_aux_hidden_state_layer_ids (hidden_states indices)"
    else:
        captured = default_captured_layers(n_target)
        captured_from = f"default for a {n_target}-layer target"
    hidden = int(layer["hidden_size"])
    spec = Eagle3Spec(
        hidden_size=hidden,
        target_hidden_size=int(layer.get("target_hidden_size") or hidden),
        vocab_size=int(layer["vocab_size"]),
        draft_vocab_size=int(layer.get("draft_vocab_size") or layer["vocab_size"]),
        captured_layers=captured,
        captured_from=captured_from,
        norm_before_residual=bool(layer.get("norm_before_residual", False)),
        norm_before_fc=bool(layer.get("norm_before_fc", False)),
        fc_norm=bool(layer.get("fc_norm", False)),
        norm_output=bool(layer.get("norm_output", False)),
        llama={
            key: layer[key]
            for key in (
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "rms_norm_eps",
                "rope_theta",
                "rope_scaling",
                "rope_parameters",
                "max_position_embeddings",
                "hidden_act",
                "attention_bias",
                "mlp_bias",
            )
            if layer.get(key) is not None
        },
    )
    problems = []
    if int(layer.get("num_hidden_layers", 1)) != 1:
        problems.append(f"it has {layer['num_hidden_layers']} layers; EAGLE-3 heads have one")
    if spec.target_hidden_size != target_config.hidden_size:
        problems.append(
            f"it expects target hidden size {spec.target_hidden_size} "
            f"(target_hidden_size or hidden_size in its config) but the target has "
            f"{target_config.hidden_size}"
        )
    if spec.vocab_size != target_config.vocab_size:
        problems.append(
            f"its vocab_size is {spec.vocab_size} but the target's is {target_config.vocab_size}"
        )
    bad = [i for i in captured if not 0 <= i < n_target]
    if bad:
        problems.append(
            f"it captures hidden_states {list(captured)} (from {captured_from}) but the target "
            f"has {n_target} layers, so valid indices are 0..{n_target - 1} "
            f"(hidden_states[{n_target}] is after the final norm)"
        )
    if problems:
        raise BenchError(
            f"the EAGLE-3 head {source} does not fit the target: " + "; ".join(problems)
        )
    return spec


def refuse_unsupported(config: dict[str, Any], weight_names: Any, source: str) -> None:
    """Refuse, by name, heads this Llama-style implementation would mis-load."""
    archs = config.get("architectures") or []
    model_type = str(config.get("model_type", ""))
    mla = (
        any("deepseek" in a.lower() for a in archs)
        or model_type in ("deepseek_v2", "deepseek_v3", "kimi_k2")
        or any(key in config for key in _MLA_CONFIG_KEYS)
        or any(part in name for name in weight_names for part in _MLA_WEIGHTS)
    )
    if mla:
        raise BenchError(
            f"{source} is a DeepSeek-V3-style EAGLE-3 head (MLA attention; architectures "
            f"{archs or '?'}, model_type {model_type or '?'}), like NVIDIA's Kimi-K2 heads; "
            "the reference engine runs only Llama-style heads: measure it on the trtllm engine"
        )
    if archs and not set(archs) & LLAMA_STYLE:
        raise BenchError(
            f"{source} declares architectures {archs}, not a Llama-style EAGLE-3 head "
            f"({', '.join(sorted(LLAMA_STYLE))})"
        )


class Eagle3Layer(nn.Module):
    """The head's decoder layer; attention over its own one-layer KV cache, one slot per
    sequence (bench/engines/batching.py)."""

    def __init__(self, spec: Eagle3Spec, config: Any) -> None:
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        super().__init__()
        h, eps = spec.hidden_size, config.rms_norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or h // self.heads
        bias = bool(getattr(config, "attention_bias", False))
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(2 * h, self.heads * self.head_dim, bias=bias)
        self.self_attn.k_proj = nn.Linear(2 * h, self.kv_heads * self.head_dim, bias=bias)
        self.self_attn.v_proj = nn.Linear(2 * h, self.kv_heads * self.head_dim, bias=bias)
        self.self_attn.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=bias)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(h, eps)
        self.hidden_norm = LlamaRMSNorm(h, eps)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps)
        self.norm_before_residual = spec.norm_before_residual

    def forward(
        self,
        embeds: torch.Tensor,  # [R, q, H]
        f: torch.Tensor,  # [R, q, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],  # [R, q, head_dim] each
        mask: torch.Tensor,  # [R, 1, q, T] bool, from cache.begin
        cache: SlotCache,  # one layer, begun for these rows
    ) -> torch.Tensor:
        """g [R, q, H] of each row's q new tokens, after its slot's earlier rows."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn, (rows, q_len) = self.self_attn, embeds.shape[:2]
        normed_f = self.hidden_norm(f)
        residual = normed_f if self.norm_before_residual else f
        x = torch.cat(
            [self.input_layernorm(embeds), normed_f], dim=-1
        )  # [R, q, 2H], embedding first
        q = attn.q_proj(x).view(rows, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)  # [R, heads, q, d], [R, kv_heads, q, d]
        k, v = cache.update(k, v, 0)  # [R, kv_heads, T, d]: the slot's rows, these included
        out, _ = slot_attention(self, q, k, v, mask)  # causal within the slot: [R, q, heads, d]
        h = residual + attn.o_proj(out.reshape(rows, q_len, -1))  # [R, q, H]
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Head(nn.Module):
    """fc (+ the 3.1 norms) → one layer → norm → lm_head over the draft vocabulary."""

    def __init__(self, spec: Eagle3Spec, own_embedding: bool) -> None:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        super().__init__()
        self.spec = spec
        config = LlamaConfig(**spec.llama)
        h, ht, c, eps = (
            spec.hidden_size,
            spec.target_hidden_size,
            len(spec.captured_layers),
            config.rms_norm_eps,
        )
        self.fc = nn.Linear(c * ht, h, bias=False)
        self.input_norm = LlamaRMSNorm(c * ht, eps) if spec.norm_before_fc else None
        self.fc_norm = (
            nn.ModuleList(LlamaRMSNorm(ht, eps) for _ in range(c)) if spec.fc_norm else None
        )
        self.layer = Eagle3Layer(spec, config)
        self.norm = LlamaRMSNorm(h, eps)
        self.lm_head = nn.Linear(h, spec.draft_vocab_size, bias=False)
        self.embed_tokens = nn.Embedding(spec.vocab_size, h) if own_embedding else None
        self.register_buffer("d2t", torch.zeros(spec.draft_vocab_size, dtype=torch.long))
        self.rotary = LlamaRotaryEmbedding(config)

    def fuse(self, captured: torch.Tensor) -> torch.Tensor:
        """f = fc(cat(low, mid, high)), with the 3.1 norms first where the head has them."""
        if self.input_norm is not None:
            captured = self.input_norm(captured)
        if self.fc_norm is not None:
            chunks = captured.chunk(len(self.fc_norm), dim=-1)
            captured = torch.cat([norm(x) for norm, x in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(captured)

    def forward(
        self,
        embeds: torch.Tensor,  # [R, q, H] token embeddings
        f: torch.Tensor,  # [R, q, H] fused target states (context rows) or own g (draft rows)
        positions: torch.Tensor,  # [R, q] RoPE positions, from cache.begin
        mask: torch.Tensor,  # [R, 1, q, T], from cache.begin
        cache: SlotCache,
        last: torch.Tensor,  # [R] the index of each row's last real token (the rest is padding)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each row's new tokens after its slot's cached rows (written into the cache);
        returns, for each row's token `last[r]` only, the draft-vocab logits [R, V_draft]
        and the g to feed back [R, H]."""
        cos_sin = self.rotary(embeds, positions)
        g = self.layer(embeds, f, cos_sin, mask, cache)  # [R, q, H]
        g = g[torch.arange(g.shape[0], device=g.device), last]  # [R, H]
        normed = self.norm(g)
        return self.lm_head(normed), normed if self.spec.norm_output else g

    def slot_cache(self, slots: int) -> SlotCache:
        """An empty KV cache for this head's layer with `slots` sequences."""
        param = self.fc.weight
        return SlotCache(
            1, slots, self.layer.kv_heads, self.layer.head_dim, param.dtype, param.device
        )

    def target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]


def _weight_key(name: str) -> str:
    """Checkpoint names → this module's: `midlayer.` and `layers.0.` are both the layer."""
    name = name.removeprefix("model.")
    for prefix in ("midlayer.", "layers.0."):
        if name.startswith(prefix):
            return "layer." + name[len(prefix) :]
    return name


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights.update(load_file(str(path)))
        else:
            weights.update(torch.load(path, map_location="cpu", weights_only=True))
    return weights


def locate_checkpoint(checkpoint: str, revision: str | None) -> Path:
    """A local folder as it is; otherwise a Hugging Face id, downloaded (or read from cache)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or checkpoint.startswith("."):
        raise BenchError(f"the EAGLE-3 checkpoint folder {checkpoint} does not exist")
    try:
        from huggingface_hub import snapshot_download

        allow = ["config.json", *WEIGHT_PATTERNS]
        return Path(snapshot_download(checkpoint, revision=revision, allow_patterns=allow))
    except Exception as err:
        raise BenchError(
            f"could not fetch the EAGLE-3 checkpoint {checkpoint} from the Hugging Face hub "
            f"({type(err).__name__}); pass a local folder instead"
        ) from None


def load_eagle3(checkpoint: str, revision: str | None, target: Any) -> tuple[Eagle3Head, str]:
    """Load a head for `target` (a transformers causal LM). Returns (head, checkpoint sha256)."""
    folder = locate_checkpoint(checkpoint, revision)
    if not (folder / "config.json").is_file():
        raise BenchError(f"the EAGLE-3 checkpoint {checkpoint} has no config.json")
    if not weight_files(folder):
        raise BenchError(
            f"the EAGLE-3 checkpoint {checkpoint} has no *.safetensors or *.bin weights"
        )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = {_weight_key(k): v for k, v in read_weights(folder).items() if k != "t2d"}
    refuse_unsupported(config, weights, checkpoint)
    spec = read_spec(config, target.config, checkpoint)
    # The target's embedding unless the head's width differs from the target's (§8).
    own_embedding = spec.target_hidden_size != spec.hidden_size
    if own_embedding and "embed_tokens.weight" not in weights:
        raise BenchError(
            f"the EAGLE-3 head {checkpoint} has hidden size {spec.hidden_size}, unlike its "
            f"target ({spec.target_hidden_size}), so it needs its own embed_tokens, which it lacks"
        )
    if not own_embedding:
        weights.pop("embed_tokens.weight", None)
    if "d2t" not in weights and spec.draft_vocab_size == spec.vocab_size:
        weights["d2t"] = torch.zeros(spec.vocab_size, dtype=torch.long)  # identity mapping
    head = Eagle3Head(spec, own_embedding)
    expected = {k: v.shape for k, v in head.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} has shape {list(weights[k].shape)}, config.json implies {list(shape)}"
        for k, shape in expected.items()
        if k in weights and weights[k].shape != shape
    ]
    if problems:
        raise BenchError(
            f"the EAGLE-3 checkpoint {checkpoint} does not match its config.json: "
            + "; ".join(problems)
        )
    head.load_state_dict({k: v.to(torch.long) if k == "d2t" else v for k, v in weights.items()})
    mapped = head.target_ids(torch.arange(spec.draft_vocab_size))
    if int(mapped.min()) < 0 or int(mapped.max()) >= target.config.vocab_size:
        raise BenchError(
            f"the EAGLE-3 head {checkpoint} maps draft ids outside the target vocabulary (d2t)"
        )
    param = next(target.parameters())
    return head.to(device=param.device, dtype=param.dtype).eval(), checkpoint_sha256(folder)

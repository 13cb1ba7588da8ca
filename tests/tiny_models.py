"""Tiny targets and EAGLE-3 heads for the drafter tests, built from configs with fixed seeds
(no trained head can be downloaded here), and the published checkpoint layouts to save
heads in (docs/engines.md, "EAGLE-3 heads")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

LAYOUTS = {
    # name: (layer prefix, how the config names the captured layers)
    "eagle_authors": ("midlayer.", "none"),  # yuhuili/EAGLE3-*: defaults, LlamaForCausalLMEagle3
    "specforge": ("midlayer.", "eagle_config"),  # layer ids under eagle_config
    "modelopt": ("layers.0.", "eagle_config"),  # Model Optimizer export
    "speculators": ("layers.0.", "top_level"),  # Eagle3Speculator, nested layer config
}


def tiny_target(
    vocab: int = 64, layers: int = 8, hidden: int = 32, seed: int = 0, scale: float = 1.0
) -> Any:
    """A random LlamaForCausalLM; `scale` multiplies lm_head so its distributions are peaky."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def greedy(target: Any, prompt: list[int], max_tokens: int, stop: int = 1) -> list[int]:
    """Plain greedy decoding with transformers' generate(), stopping at `stop` (the tiny
    target's eos; -1 never stops)."""
    with torch.no_grad():
        out = target.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=stop,
        )
    return out[0, len(prompt) :].tolist()


def head_config(
    target: Any,
    hidden: int | None = None,
    draft_vocab: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    **extra: Any,
) -> dict[str, Any]:
    """A Llama-style EAGLE-3 config.json (the EAGLE authors' fields) for `target`."""
    t = target.config
    hidden = hidden or t.hidden_size
    config = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": 1,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "vocab_size": t.vocab_size,
        "draft_vocab_size": draft_vocab or t.vocab_size,
    }
    if hidden != t.hidden_size:
        config["target_hidden_size"] = t.hidden_size
    config.update(extra)
    return config


def random_head_weights(
    config: dict[str, Any], n_captured: int = 3, seed: int = 1, embed: bool = False
) -> dict[str, torch.Tensor]:
    """Random weights in canonical names (`layer.` prefix), norms perturbed away from 1 so a
    swapped norm shows; d2t maps the draft vocabulary onto spread-out target ids."""
    gen = torch.Generator().manual_seed(seed)
    h = config["hidden_size"]
    ht = config.get("target_hidden_size", h)
    hd = h // config["num_attention_heads"]
    q, kv, inter = (
        config["num_attention_heads"] * hd,
        config["num_key_value_heads"] * hd,
        config["intermediate_size"],
    )
    vd, v = config["draft_vocab_size"], config["vocab_size"]

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    def norm(n: int) -> torch.Tensor:
        return 1.0 + rand(n, scale=0.2)

    w = {
        "fc.weight": rand(h, n_captured * ht, scale=0.2),
        "layer.self_attn.q_proj.weight": rand(q, 2 * h),
        "layer.self_attn.k_proj.weight": rand(kv, 2 * h),
        "layer.self_attn.v_proj.weight": rand(kv, 2 * h),
        "layer.self_attn.o_proj.weight": rand(h, q),
        "layer.mlp.gate_proj.weight": rand(inter, h),
        "layer.mlp.up_proj.weight": rand(inter, h),
        "layer.mlp.down_proj.weight": rand(h, inter),
        "layer.input_layernorm.weight": norm(h),
        "layer.hidden_norm.weight": norm(h),
        "layer.post_attention_layernorm.weight": norm(h),
        "norm.weight": norm(h),
        "lm_head.weight": rand(vd, h, scale=1.0),
    }
    if vd != v:  # draft id i → target id i + d2t[i]: every other id from 2 on, where it fits
        w["d2t"] = torch.arange(vd) + 2 if 2 * vd + 2 <= v else torch.zeros(vd, dtype=torch.long)
        w["t2d"] = torch.zeros(v, dtype=torch.bool)
        w["t2d"][w["d2t"] + torch.arange(vd)] = True
    if config.get("norm_before_fc"):
        w["input_norm.weight"] = norm(n_captured * ht)
    if config.get("fc_norm"):
        for i in range(n_captured):
            w[f"fc_norm.{i}.weight"] = norm(ht)
    if embed:
        w["embed_tokens.weight"] = rand(v, h, scale=1.0)
    return w


def save_head(
    folder: Path,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    layout: str,
    layer_ids: list[int] | None = None,
) -> Path:
    """Write a head as `layout` publishes it. `layer_ids` ("output of layer X") go where the
    layout keeps them: eagle_config as they are, top level (speculators) as indices X + 1."""
    prefix, ids_at = LAYOUTS[layout]
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if layer_ids is not None:
        if ids_at == "eagle_config":
            config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": layer_ids}
        elif ids_at == "top_level":
            config["eagle_aux_hidden_state_layer_ids"] = [x + 1 for x in layer_ids]
        else:
            raise ValueError(f"layout {layout} keeps no layer ids")
    if layout == "speculators":
        nested = {k: config.pop(k) for k in list(config) if k not in _SPECULATORS_TOP}
        config = {
            **config,
            "architectures": ["Eagle3Speculator"],
            "transformer_layer_config": nested,
        }
    renamed = {
        (prefix + k[len("layer.") :] if k.startswith("layer.") else k): v
        for k, v in weights.items()
    }
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


_SPECULATORS_TOP = {
    "draft_vocab_size",
    "target_hidden_size",
    "eagle_aux_hidden_state_layer_ids",
    "norm_before_residual",
    "norm_before_fc",
    "fc_norm",
    "norm_output",
}

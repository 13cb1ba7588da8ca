"""EAGLE-3 heads: every published layout loads, and the drafter's proposals equal the head's
equations (docs/engines.md, "EAGLE-3 heads") computed directly here, without a KV cache,
from one plain target forward; mismatches with the target and unsupported heads are refused with clear messages."""

from __future__ import annotations

import json

import pytest
import torch

from bench.engines.drafters import DraftInputs, Eagle3Drafter
from bench.engines.eagle3 import load_eagle3
from bench.errors import BenchError
from tests.tiny_models import head_config, random_head_weights, save_head, tiny_target


def rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x [heads, n, d] rotated by position (the Llama / GPT-NeoX half-split convention)."""
    d = x.shape[-1]
    angles = positions[:, None].float() / theta ** (torch.arange(0, d, 2).float() / d)  # [n, d/2]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def reference_drafts(w, cfg, target, context, captured, k):
    """k greedy drafts for `context` by §8, recomputing the whole sequence at every step."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    h = cfg["hidden_size"]
    hd = h // nh
    with torch.no_grad():
        # Target states for positions 0..P-1 (the newest token has none yet).
        states = target(input_ids=torch.tensor([context[:-1]]), output_hidden_states=True)
        cat = torch.cat([states.hidden_states[i][0] for i in captured], -1)  # [P, C·Ht]
        if cfg.get("norm_before_fc"):
            cat = rms(cat, w["input_norm.weight"])
        if cfg.get("fc_norm"):
            chunks = cat.chunk(len(captured), -1)
            cat = torch.cat([rms(c, w[f"fc_norm.{i}.weight"]) for i, c in enumerate(chunks)], -1)
        rows_f = list(cat @ w["fc.weight"].T)  # f per context row
        rows_tok = list(context[1:])  # state at position t pairs with token t + 1
        own = "embed_tokens.weight" in w and cfg.get("target_hidden_size", h) != h
        embed = w["embed_tokens.weight"] if own else target.get_input_embeddings().weight
        drafts = []
        for _ in range(k):
            n = len(rows_tok)
            f = torch.stack(rows_f)  # [n, H]
            normed_f = rms(f, w["layer.hidden_norm.weight"])
            x = torch.cat([rms(embed[rows_tok], w["layer.input_layernorm.weight"]), normed_f], -1)
            pos = torch.arange(n)
            q = rope(
                (x @ w["layer.self_attn.q_proj.weight"].T).view(n, nh, hd).transpose(0, 1), pos
            )
            kk = rope(
                (x @ w["layer.self_attn.k_proj.weight"].T).view(n, nkv, hd).transpose(0, 1), pos
            )
            v = (x @ w["layer.self_attn.v_proj.weight"].T).view(n, nkv, hd).transpose(0, 1)
            kk, v = kk.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
            scores = (q @ kk.transpose(1, 2)) / hd**0.5
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -torch.inf)
            attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, h)
            residual = normed_f if cfg.get("norm_before_residual") else f
            hh = residual + attn @ w["layer.self_attn.o_proj.weight"].T
            m = rms(hh, w["layer.post_attention_layernorm.weight"])
            gate, up = m @ w["layer.mlp.gate_proj.weight"].T, m @ w["layer.mlp.up_proj.weight"].T
            g = hh + (torch.nn.functional.silu(gate) * up) @ w["layer.mlp.down_proj.weight"].T
            normed_g = rms(g, w["norm.weight"])
            draft_id = int((normed_g[-1] @ w["lm_head.weight"].T).argmax())
            token = draft_id + int(w["d2t"][draft_id]) if "d2t" in w else draft_id
            drafts.append(token)
            rows_f.append(normed_g[-1] if cfg.get("norm_output") else g[-1])  # no fc
            rows_tok.append(token)
        return drafts


def target_states(target, drafter, prompt):
    with torch.no_grad():
        out = target(input_ids=torch.tensor([prompt]), output_hidden_states=True)
    return torch.cat([out.hidden_states[i][0] for i in drafter.captured_layers], -1)


CASES = {
    # name: (layout, head hidden, draft vocab, explicit layer ids, embed_tokens, extra config)
    "eagle-authors-default-layers-d2t": ("eagle_authors", 32, 24, None, False, {}),
    "specforge-layer-ids": ("specforge", 32, None, [0, 3, 6], False, {}),
    "modelopt-random-embedding-ignored": ("modelopt", 32, 24, [1, 3, 5], True, {}),
    "speculators-narrow-head-own-embedding": ("speculators", 16, 24, [0, 2, 4], True, {}),
    "norm-before-residual": ("specforge", 32, 24, None, False, {"norm_before_residual": True}),
    "eagle3.1-flags": (
        "modelopt",
        32,
        24,
        [1, 3, 5],
        False,
        {
            "norm_before_fc": True,
            "fc_norm": True,
            "norm_output": True,
            "norm_before_residual": True,
        },
    ),
}


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, layers=8, hidden=32, seed=0, scale=4.0)


@pytest.mark.parametrize("case", list(CASES))
def test_layout_loads_and_drafts_as_the_equations_say(case, target, tmp_path):
    layout, hidden, draft_vocab, layer_ids, embed, extra = CASES[case]
    cfg = head_config(target, hidden=hidden, draft_vocab=draft_vocab, **extra)
    weights = random_head_weights(cfg, seed=3, embed=embed)
    folder = save_head(tmp_path / "head", cfg, weights, layout, layer_ids)
    head, sha256 = load_eagle3(str(folder), None, target)

    # Shapes and vocabulary mapping.
    captured = (2, 4, 5) if layer_ids is None else tuple(x + 1 for x in layer_ids)
    assert head.spec.captured_layers == captured
    assert head.fc.weight.shape == (hidden, 3 * 32)
    assert head.lm_head.weight.shape == (draft_vocab or 64, hidden)
    if draft_vocab:
        assert head.target_ids(torch.arange(draft_vocab)).tolist() == [2 * i + 2 for i in range(24)]
    assert (head.embed_tokens is not None) == (hidden != 32)
    assert len(sha256) == 64

    drafter = Eagle3Drafter(head, target.get_input_embeddings())
    prompt = [0, 5, 9, 17, 33, 2, 41, 7, 12]
    context = [*prompt, 20]  # the prefill's token appended
    hidden_states = target_states(target, drafter, prompt)  # [P, 3·Ht]
    with torch.no_grad():
        proposal = drafter.propose(context, 3, DraftInputs(0, hidden_states))
    assert proposal.tokens == reference_drafts(weights, cfg, target, context, captured, 3)


def test_checkpoint_hash_follows_the_files(target, tmp_path):
    cfg = head_config(target)
    a = save_head(tmp_path / "a", cfg, random_head_weights(cfg, seed=1), "eagle_authors")
    b = save_head(tmp_path / "b", cfg, random_head_weights(cfg, seed=2), "eagle_authors")
    c = save_head(tmp_path / "c", cfg, random_head_weights(cfg, seed=1), "modelopt")
    hashes = [load_eagle3(str(p), None, target)[1] for p in (a, b, a, c)]
    assert hashes[0] == hashes[2] and len(set(hashes)) == 3


def _message(target, tmp_path, cfg, weights=None, layout="eagle_authors", layer_ids=None) -> str:
    weights = weights if weights is not None else random_head_weights(cfg)
    folder = save_head(tmp_path / "head", cfg, weights, layout, layer_ids)
    with pytest.raises(BenchError) as err:
        load_eagle3(str(folder), None, target)
    return str(err.value)


def test_mismatches_with_the_target_are_named_one_by_one(target, tmp_path):
    cfg = head_config(target, draft_vocab=24, vocab_size=100)
    cfg["target_hidden_size"] = 48
    weights = random_head_weights({**cfg, "target_hidden_size": 32})
    message = _message(target, tmp_path, cfg, weights, "specforge", layer_ids=[0, 3, 7])
    assert "target hidden size 48" in message and "the target has 32" in message
    assert "vocab_size is 100 but the target's is 64" in message
    # Layer 7 of an 8-layer target is hidden_states[8]: after the final norm, refused.
    assert "captures hidden_states [1, 4, 8]" in message and "valid indices are 0..7" in message


def test_weights_that_contradict_the_config_are_refused(target, tmp_path):
    cfg = head_config(target)
    weights = random_head_weights(cfg)
    weights["layer.self_attn.q_proj.weight"] = weights["layer.self_attn.q_proj.weight"][:, :10]
    del weights["norm.weight"]
    message = _message(target, tmp_path, cfg, weights)
    assert "missing norm.weight" in message
    assert "layer.self_attn.q_proj.weight has shape [32, 10]" in message


def test_narrow_head_without_its_own_embedding_is_refused(target, tmp_path):
    cfg = head_config(target, hidden=16)
    message = _message(target, tmp_path, cfg, random_head_weights(cfg, embed=False))
    assert "needs its own embed_tokens" in message


def test_deepseek_mla_head_is_refused_by_name(target, tmp_path):
    # The shape of NVIDIA's Kimi-K2 heads and their kin: a DeepSeek-V3 (MLA) layer.
    folder = tmp_path / "kimi-head"
    folder.mkdir()
    config = {
        "architectures": ["Eagle3DeepseekV2ForCausalLM"],
        "model_type": "kimi_k2",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "vocab_size": 64,
        "draft_vocab_size": 64,
        "q_lora_rank": 8,
        "kv_lora_rank": 8,
        "qk_rope_head_dim": 4,
    }
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(
        {"midlayer.self_attn.kv_a_proj_with_mqa.weight": torch.zeros(12, 64)},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(BenchError, match="DeepSeek-V3-style EAGLE-3 head .*MLA"):
        load_eagle3(str(folder), None, target)


def test_other_architectures_are_refused(target, tmp_path):
    cfg = head_config(target, architectures=["MedusaModel"])
    assert "not a Llama-style EAGLE-3 head" in _message(target, tmp_path, cfg)


def test_missing_local_checkpoint_is_a_clear_error(target, tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_eagle3(str(tmp_path / "nothing"), None, target)

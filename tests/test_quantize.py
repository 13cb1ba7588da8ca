"""`target.quantization: int8-dynamic` on a real (tiny, random) Llama saved as a folder and
loaded the way the reference engine loads its target (`load_causal_lm`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bench.config import TargetConfig
from bench.engines.quantize import quantize_target
from bench.errors import BenchError
from bench.target import load_causal_lm
from tests.tiny_models import tiny_target

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear
LAYERS = 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tiny_target(vocab=256, layers=LAYERS, hidden=64, scale=8.0).save_pretrained(path)
    return path


def load(folder, quantization: str):
    target = TargetConfig(name="tiny", path=str(folder), quantization=quantization)
    return load_causal_lm(target, "cpu")[0]


def test_linear_layers_become_int8_but_embeddings_and_lm_head_stay_float(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's deprecation notices are silenced, narrowly
        model = load(folder, "int8-dynamic")
    quantized = [m for m in model.modules() if isinstance(m, DynamicLinear)]
    assert len(quantized) == LAYERS * 7  # q, k, v, o, gate, up, down per layer
    assert all(m.weight().dtype == torch.qint8 for m in quantized)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    # What the EAGLE-3 drafter reads from the target still works.
    assert model.get_input_embeddings().weight.dtype == torch.float32
    out = model(torch.tensor([[3, 4, 5]]), output_hidden_states=True)
    assert len(out.hidden_states) == LAYERS + 1
    assert out.hidden_states[-1].dtype == torch.float32


def test_logits_stay_close_to_float32_and_greedy_generation_runs(folder):
    reference, quantized = load(folder, "none"), load(folder, "int8-dynamic")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 200, 11]])
    with torch.inference_mode():
        want, got = reference(ids).logits, quantized(ids).logits  # [1, 8, V]
        generated = quantized.generate(ids, max_new_tokens=8, do_sample=False)
    error = (got - want).abs().max() / want.abs().max()
    assert error < 0.05, f"int8 logits differ from float32 by {error:.3f} of the largest"
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75
    assert generated.shape == (1, 16)


def test_none_is_untouched_and_other_devices_are_refused(folder):
    model = load(folder, "none")
    assert not any(isinstance(m, DynamicLinear) for m in model.modules())
    with pytest.raises(BenchError, match="runs on the CPU only, and this run's device is cuda"):
        quantize_target(model, "int8-dynamic", "cuda")

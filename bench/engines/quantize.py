"""Lower-precision target weights for the reference engine (`target.quantization`).

`int8-dynamic` is PyTorch's dynamic quantisation: every nn.Linear of the target but the
output projection keeps its weight as int8 with one scale per output row, and each call
quantises its input to 8 bits from the input's own range, multiplies in int8 (FBGEMM /
oneDNN kernels) and returns float32. It exists for float32 models on the CPU only, which
config validation enforces (dtype, device, engine); the device `auto` resolves to is
checked here. The quantised model is a different target: its greedy output and its
acceptance lengths differ from float32's, so `bench compare` refuses to compare the two
(`--allow precision`). How different depends on the model's activations: SmolLM2-135M's
residual stream reaches about 25,000 against a mean near 6, and its int8 greedy text
leaves float32's within the first tokens (README, scripts/time_quantized_target.py).

What stays float32, and why:
- the embeddings (`get_input_embeddings()`, which the EAGLE-3 drafter reads): a lookup,
  not a Linear, so it is not touched;
- the output projection (`get_output_embeddings()`, lm_head): its error lands on the
  logits themselves, where it flips greedy choices between close candidates (most int8
  recipes keep it in full precision), and when it is tied to the input embeddings
  (SmolLM2) quantising it would add an int8 copy without freeing the float one;
- norms and the hidden states the model returns (`output_hidden_states`), which are the
  float outputs of the quantised layers.
"""

from __future__ import annotations

import warnings
from typing import Any

from bench.errors import BenchError


def quantize_target(model: Any, scheme: str, device: str) -> Any:
    """`model` with its Linear layers quantised per `scheme` (in place; `none` returns it
    as it is). `device` is the one the model is about to run on."""
    if scheme == "none":
        return model
    if scheme != "int8-dynamic":
        raise BenchError(f"unknown target.quantization {scheme!r} (known: none, int8-dynamic)")
    if device != "cpu":
        raise BenchError(
            f"target.quantization {scheme} runs on the CPU only, and this run's device is "
            f"{device}; set engine.device to cpu"
        )
    from torch import nn

    output = model.get_output_embeddings()
    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not output
    }
    if not names:
        raise BenchError(
            f"target.quantization {scheme}: {type(model).__name__} has no nn.Linear layers "
            "besides its output projection to quantise"
        )
    with warnings.catch_warnings():
        # torch.ao.quantization still works in this torch but warns on every call that it
        # moves to torchao; the run's output is no place for that.
        warnings.filterwarnings(
            "ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning
        )
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # qint8 weights with a scale per output row (per channel): one row with large
        # weights no longer coarsens every other row's steps.
        spec = dict.fromkeys(names, per_channel_dynamic_qconfig)
        return quantize_dynamic(model, spec, inplace=True)

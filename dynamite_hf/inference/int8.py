"""Opt-in int8 for CPUs: the FFN layers, where most of the time goes, as dynamically quantized linear layers.

`quantize_int8(model, parts)` replaces, in place, the two linear layers of every feed-forward block of the
chosen parts with PyTorch's dynamic int8 linear layers (per-output-channel int8 weights; activations quantized
per call from their own range; int32 accumulation). Nothing else changes: attention, normalisation, the mask
head and the backbone stay float32.

- `"click"`: the interactive transformer's decoder FFNs, which run over every stride-4 pixel on each click
  (about two thirds of a click).
- `"image"`: the pixel decoder's FFNs, part of the per-image stage.

The masks change a little (docs/performance.md 'int8' measures how much); it is never the default.
A quantized model is for inference on the CPU only and cannot be saved with `save_pretrained`: quantize after
loading.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import nn

INT8_PARTS = ("click", "image")


def _ffn_linears(model, part: str) -> list[tuple[nn.Module, str]]:
    if part == "click":
        blocks = [layer.ffn for layer in model.interactive_transformer.decoder_layers]
    else:
        blocks = list(model.pixel_decoder.encoder_layers)
    return [(block, name) for block in blocks for name in ("linear1", "linear2")]


def quantize_int8(model, parts: Iterable[str] = INT8_PARTS):
    """Quantize the FFN linear layers of `parts` (any of `INT8_PARTS`) of `model` to int8, in place; returns it.

    The model is put in eval mode. Raises `ValueError` for an unknown part or an already quantized model.
    """
    parts = tuple(parts)
    unknown = [part for part in parts if part not in INT8_PARTS]
    if unknown or not parts:
        raise ValueError(f"`parts` must be a non-empty selection of {INT8_PARTS}, got {parts!r}")
    if is_quantized(model):
        raise ValueError("the model is already quantized (quantize_int8 was applied to it)")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU: move the model to the CPU first")
    model.eval()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        # PyTorch marks torch.ao.quantization deprecated in favour of torchao; the kernels are the same.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for part in parts:
            for parent, name in _ffn_linears(model, part):
                linear = getattr(parent, name)
                linear.qconfig = per_channel_dynamic_qconfig
                setattr(parent, name, DynamicLinear.from_float(linear))
    return model


def is_quantized(model) -> bool:
    """Whether `model` has int8 layers (`quantize_int8` was applied to it)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(module, DynamicLinear) for module in model.modules())

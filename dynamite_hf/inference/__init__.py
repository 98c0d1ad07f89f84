"""How fast the model runs, never what it computes.

Every backend offers the plain model's inference interface: `get_image_embeddings(pixel_values)` once per image,
then `backend(image_embeddings=..., input_points=..., input_labels=..., input_timestamps=...)` per click, returning
`pred_masks` and `query_labels` as `DynamiteModel.forward` does (post-processing is the processor's):

- `"eager"`: the `DynamiteModel` itself, the reference computation (any device, any dtype);
- `"cpu"`: `CpuClickDecoder` (`cpu.py`), the same function computed faster on a CPU;
- `"onnx"`: `OnnxDynamiteModel` (`onnx.py`), the model's two stages exported to ONNX and run by onnxruntime.

`select_backend(model, "auto")` picks the CPU click decoder for a float32 model on the CPU and the model itself
otherwise (a CUDA model, bfloat16). `int8.py` (opt-in int8 FFN layers) and `runtime.py` (the process's allocator)
change how fast, and for int8 a little what, any backend computes.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from ..models.dynamite.modeling_dynamite import DynamiteModel

BACKENDS = ("auto", "eager", "cpu", "onnx")


def select_backend(model: Any, backend: str = "auto") -> Any:
    """The backend named `backend` (one of `BACKENDS`) over `model`, a `DynamiteModel` (or an `OnnxDynamiteModel`,
    which is its own backend). `"onnx"` with a `DynamiteModel` exports it to a temporary folder first (a minute or
    more; export once with `scripts/export_onnx.py` and load `OnnxDynamiteModel.from_pretrained(folder)` instead)."""
    from .onnx import OnnxDynamiteModel, export_onnx

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(model, OnnxDynamiteModel):
        if backend not in ("auto", "onnx"):
            raise ValueError(f"an OnnxDynamiteModel runs only the 'onnx' backend, not {backend!r}")
        return model
    if not isinstance(model, DynamiteModel):
        raise TypeError(f"model must be a DynamiteModel or an OnnxDynamiteModel, got {type(model).__name__}")
    model = model.eval()
    on_cpu_in_float32 = model.device.type == "cpu" and model.dtype == torch.float32
    if backend == "cpu" or (backend == "auto" and on_cpu_in_float32):
        from .cpu import CpuClickDecoder

        return CpuClickDecoder(model)
    if backend == "onnx":
        folder = tempfile.mkdtemp(prefix="dynamite_onnx_")
        export_onnx(model, folder)
        return OnnxDynamiteModel.from_pretrained(folder)
    return model


__all__ = ["BACKENDS", "select_backend"]

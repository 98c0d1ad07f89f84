"""Inference form of the feed-forward blocks (the pixel decoder's and the interactive transformer's): the same
function as `norm(x + linear2(relu(linear1(x))))`, over row chunks, in place, through oneDNN's fused linears."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Rows per chunk of an inference FFN: its (rows, ffn_dim) activation is at most this many float32 values (32 MB).
FFN_CHUNK_ELEMENTS = 2**23

# Fewer rows than this (the encoder's queries) keep the plain path: reordering the weights would cost more than
# the products (a 256 x 2048 weight takes about 0.4 ms) unless the caller reorders once for many calls.
ONEDNN_MIN_ROWS = 512
_onednn_works: bool | None = None


def _onednn_available() -> bool:
    """Whether this torch build runs oneDNN's fused linear (probed once, on a tiny product)."""
    global _onednn_works
    if _onednn_works is None:
        try:
            weight = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 3), 2)
            product = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 3), weight, torch.zeros(4), "relu", [], "")
            _onednn_works = bool(torch.backends.mkldnn.is_available()) and bool(torch.all(product == 3))
        except (AttributeError, RuntimeError, NotImplementedError):
            _onednn_works = False
    return _onednn_works


def onednn_linear_weight(weight: Tensor, rows: int) -> Tensor | None:
    """`weight` `(out_features, in_features)` reordered into oneDNN's blocked layout for products of about
    `rows` rows (`torch.ops.mkldnn._linear_pointwise`, the kernel behind inductor's CPU linears), or None where
    oneDNN does not apply: not a float32 CPU tensor, oneDNN disabled with `torch.backends.mkldnn.flags(enabled=False)`,
    or this torch lacks the kernels. Reordering costs about as much as a small product (0.4 ms for a 256 x 2048 weight):
    callers that multiply many blocks by one weight reorder once (the CPU click decoder keeps its FFNs' reordered
    weights between clicks, checked against the weights' storage and version counter)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if not torch.backends.mkldnn.enabled or not _onednn_available():
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def onednn_ffn_weights(linear1: nn.Module, linear2: nn.Module, rows: int) -> tuple[Tensor, Tensor] | None:
    """The two weights of an inference FFN reordered for oneDNN (`onednn_linear_weight`), for
    `ffn_in_chunks(..., onednn_weights=...)`; None unless both are plain float32 CPU `nn.Linear`s with biases
    and oneDNN applies."""
    linears = (linear1, linear2)
    if not all(type(linear) is nn.Linear and linear.bias is not None for linear in linears):
        return None
    weights = [onednn_linear_weight(linear.weight, rows) for linear in linears]
    return None if weights[0] is None or weights[1] is None else tuple(weights)


def ffn_in_chunks(
    hidden: Tensor,
    linear1: nn.Module,
    linear2: nn.Module,
    norm: nn.Module,
    overwrite_input: bool = False,
    onednn_weights: tuple[Tensor, Tensor] | None = None,
    use_onednn: bool = True,
) -> Tensor:
    """`norm(hidden + linear2(relu(linear1(hidden))))` for inference, `hidden` `(..., dim)`, computed over chunks
    of rows: the same function, with a peak of one chunk's `ffn_dim`-wide activation instead of the whole one
    (124 MB for a paper preset's decoder at 800x1216).

    Where `linear1` is a plain `nn.Linear`, its product goes into one activation buffer reused by every chunk,
    with the bias added afterwards: `addmm` would first copy the bias into a fresh `(rows, ffn_dim)` output and
    make the GEMM read it back (bit-identical, about 15 % faster for a paper preset's decoder FFN).

    `overwrite_input=True` (the caller no longer needs `hidden`, and both linears are plain): the residual sum
    is made in `hidden` itself, `linear2`'s product added to it by the GEMM (`addmm_`), and the norm runs once
    over the whole. No `(rows, dim)` temporary per chunk and no copy into an output: at a paper preset's 60,800
    stride-4 pixels that spares two 62 MB passes per FFN. The same function, summed in another order (equal up
    to float rounding, not bit for bit).

    Float32 on a CPU whose torch has oneDNN's fused linear and with `use_onednn` (`onednn_ffn_weights`,
    reordered here unless the caller passes them as `onednn_weights`): `linear1` + bias + ReLU is one product, and with one chunk and
    `overwrite_input` `linear2` + bias + residual another, into a new tensor (`hidden` is then left alone).
    Equal up to float rounding (another GEMM kernel); about 5 % off a paper preset's click on this project's
    2-core CPU, its fused first product running at 1.05-1.15x `torch.mm` + bias + ReLU.
    """
    rows = hidden.reshape(-1, hidden.shape[-1])
    step = max(1, FFN_CHUNK_ELEMENTS // linear1.out_features)
    plain = all(type(linear) is nn.Linear and linear.bias is not None for linear in (linear1, linear2))
    reuse = type(linear1) is nn.Linear and linear1.bias is not None  # not a quantized module
    if use_onednn and onednn_weights is None and rows.dtype == torch.float32 and rows.shape[0] >= ONEDNN_MIN_ROWS:
        onednn_weights = onednn_ffn_weights(linear1, linear2, min(step, rows.shape[0]))
    in_place = overwrite_input and plain and hidden.is_contiguous()  # `rows` is then a view of `hidden`
    if onednn_weights is not None:
        first, second = onednn_weights
        if in_place and rows.shape[0] <= step:
            inner = torch.ops.mkldnn._linear_pointwise(rows, first, linear1.bias, "relu", [], "")
            summed = torch.ops.mkldnn._linear_pointwise.binary(inner, rows, second, linear2.bias, "add")
            return norm(summed).view(hidden.shape)
    elif reuse:
        activation = rows.new_empty(min(step, rows.shape[0]), linear1.out_features)
    output = None if in_place else torch.empty_like(rows)
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        if onednn_weights is not None:
            inner = torch.ops.mkldnn._linear_pointwise(chunk, first, linear1.bias, "relu", [], "")
        elif reuse:
            inner = torch.mm(chunk, linear1.weight.t(), out=activation[: chunk.shape[0]])
            inner.add_(linear1.bias).relu_()
        else:
            inner = linear1(chunk).relu_()
        if in_place:
            chunk.add_(linear2.bias).addmm_(inner, linear2.weight.t())
        else:
            output[start : start + step] = norm(linear2(inner).add_(chunk))
    if in_place:
        return norm(hidden)
    return output.view(hidden.shape)

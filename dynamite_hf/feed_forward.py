"""The feed-forward blocks' inference form, shared by the pixel decoder and the interactive transformer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Rows per chunk of an inference FFN: its (rows, ffn_dim) activation is at most this many float32 values (32 MB).
FFN_CHUNK_ELEMENTS = 2**23


def ffn_in_chunks(hidden: Tensor, linear1: nn.Module, linear2: nn.Module, norm: nn.Module) -> Tensor:
    """`norm(hidden + linear2(relu(linear1(hidden))))` for inference, `hidden` `(..., dim)`, computed over chunks
    of rows into one output: the same function, with a peak of one chunk's `ffn_dim`-wide activation instead of
    the whole one (124 MB for a paper preset's decoder at 800x1216), and the chunk's sums done in place."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    output = torch.empty_like(rows)
    step = max(1, FFN_CHUNK_ELEMENTS // linear1.out_features)
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        part = linear2(linear1(chunk).relu_())
        output[start : start + step] = norm(part.add_(chunk))
    return output.view(hidden.shape)

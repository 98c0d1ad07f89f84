"""The pixel decoder's position encoding against DETR's formula."""

from __future__ import annotations

import math

import torch

from dynamite_hf.models.dynamite.pixel_decoder import sine_position_encoding


def test_sine_position_encoding_matches_detr_formula() -> None:
    encoding = sine_position_encoding(4, 6, 8, torch.device("cpu"))
    assert encoding.shape == (1, 16, 4, 6)
    row, col, i = 2, 3, 5  # channel 8 + 5 is pos_x frequency pair 2, cosine
    angle = (col + 1) / (6 + 1e-6) * 2 * math.pi / 10000 ** (2 * (i // 2) / 8)
    torch.testing.assert_close(encoding[0, 8 + i, row, col], torch.tensor(math.cos(angle)))

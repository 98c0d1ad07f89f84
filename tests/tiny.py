"""Tiny random models of every backbone family, and click inputs for them (as transformers' `*ModelTester`)."""

from __future__ import annotations

from pathlib import Path

import torch

from dynamite_hf import Click, DynamiteConfig, DynamiteImageProcessor, DynamiteModel
from dynamite_hf.clicks import clicks_to_inputs

TINY_HEAD = {
    "hidden_dim": 32,
    "num_heads": 4,
    "encoder_layers": 3,
    "encoder_ffn_dim": 64,
    "decoder_layers": 2,
    "decoder_ffn_dim": 64,
    "pixel_decoder_dim": 32,
    "pixel_decoder_layers": 1,
    "pixel_decoder_ffn_dim": 64,
    "pixel_decoder_num_heads": 4,
    "group_norm_groups": 8,
    "num_static_bg_queries": 3,
}
TINY_BACKBONES = {
    "resnet50": {},
    "hrnet_w32": {},
    "mit_b0": {"backbone_config": {"embed_dims": [8, 16, 32, 32], "num_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1]}},
    "swin_tiny": {
        "backbone_config": {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 4}
    },
    "mobilenet_v2": {},
}


def tiny_model(preset: str = "mobilenet_v2", attn_implementation: str | None = None, **overrides) -> DynamiteModel:
    """A tiny random model of `preset`'s backbone family (seeded, eval mode)."""
    torch.manual_seed(0)
    config = DynamiteConfig.from_preset(preset, **{**TINY_HEAD, **TINY_BACKBONES[preset], **overrides})
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return DynamiteModel(config).eval()


def save_app_model(folder: Path) -> Path:
    """A model folder for the app's tests: the tiny model without static background queries (every pixel goes to some
    instance unless a background click claims it) and the CPU preset's image processor."""
    tiny_model(num_static_bg_queries=0).save_pretrained(folder)
    DynamiteImageProcessor.from_preset("mobilenet_v2").save_pretrained(folder)
    return folder


def two_instance_clicks() -> list[Click]:
    """Clicks in the model's frame: instance 0 twice, instance 1 once, a background click between them."""
    return [
        Click(0, 10.5, 20.5, 0, "model"),
        Click(1, 40.0, 50.0, 1, "model"),
        Click(None, 60.0, 5.0, 2, "model"),
        Click(0, 15.0, 30.0, 3, "model"),
    ]


def click_inputs(*images: list[Click]) -> dict[str, torch.Tensor]:
    """The model's click arguments for per-image click lists (default: `two_instance_clicks()` once)."""
    return clicks_to_inputs(list(images) or [two_instance_clicks()])

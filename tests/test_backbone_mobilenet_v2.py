"""The CPU preset's MobileNetV2 backbone and its ImageNet weights."""

from __future__ import annotations

import pytest
import torch

from dynamite_hf import DynamiteConfig, DynamiteModel
from dynamite_hf.models.dynamite import backbone_mobilenet_v2 as mobilenet_v2
from dynamite_hf.training.imagenet import imagenet_weights_path, load_imagenet_backbone


def test_levels_have_the_documented_strides_and_channels() -> None:
    backbone = mobilenet_v2.build(DynamiteConfig.from_preset("mobilenet_v2"))
    features = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(24, 16, 24), (32, 8, 12), (96, 4, 6), (320, 2, 3)]
    assert backbone.out_channels == (24, 32, 96, 320)


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match="depth"):
        mobilenet_v2.build(DynamiteConfig.from_preset("mobilenet_v2", backbone_config={"depth": 3}))


def test_imagenet_weights_fill_every_kept_layer() -> None:
    try:
        path = imagenet_weights_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    model = load_imagenet_backbone(DynamiteModel(DynamiteConfig.from_preset("mobilenet_v2")))
    reference = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.backbone.state_dict()
    assert set(ours) <= set(reference)
    for name in ours:
        assert torch.equal(ours[name], reference[name]), name
    with torch.inference_mode():
        features = model.backbone.eval()(torch.randn(1, 3, 64, 64))
    assert all(f.isfinite().all() and f.std() > 0 for f in features)

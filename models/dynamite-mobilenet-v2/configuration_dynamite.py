"""DynaMITe configuration and the named presets of the released models."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

BACKBONE_TYPES = ("resnet", "swin", "mit", "hrnet", "mobilenet_v2")

# Each family's defaults are the released values (R50, HRNet-W32, MiT-B0, Swin-T; MobileNetV2 for the CPU preset).
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet": {"depth": 50, "norm": "frozen_bn"},
    "hrnet": {"width": 32, "stage_modules": [1, 4, 3], "blocks_per_branch": 4},
    "mit": {
        "embed_dims": [32, 64, 160, 256],
        "num_heads": [1, 2, 5, 8],
        "depths": [2, 2, 2, 2],
        "sr_ratios": [8, 4, 2, 1],
        "mlp_ratio": 4,
        "drop_path_rate": 0.1,
        "freeze_first_stage": True,
    },
    "swin": {
        "embed_dim": 96,
        "depths": [2, 2, 6, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "mlp_ratio": 4.0,
        "drop_path_rate": 0.3,
        "pretrain_img_size": 224,
        "patch_size": 4,
    },
    "mobilenet_v2": {"width_multiplier": 1.0},
}


def merge_backbone_config(family: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated by `given`; a key the family does not know is a `ValueError` naming it."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {family} backbone_config keys {sorted(unknown)}; expected {sorted(defaults)}")
    return {**defaults, **given}


# The five released models: backbone family and its hyper-parameters (spec section 1.2). The family modules'
# defaults are the released values (MiT-B0, Swin-T, R50, HRNet-W32); they are written out into config.json.
def _released_backbones() -> dict[str, tuple[str, dict[str, Any]]]:
    swin_large = {
        "embed_dim": 192,
        "depths": [2, 2, 18, 2],
        "num_heads": [6, 12, 24, 48],
        "window_size": 12,
        "pretrain_img_size": 384,
    }
    return {
        "resnet50": ("resnet", dict(BACKBONE_DEFAULTS["resnet"])),
        "hrnet_w32": ("hrnet", dict(BACKBONE_DEFAULTS["hrnet"])),
        "mit_b0": ("mit", dict(BACKBONE_DEFAULTS["mit"])),
        "swin_tiny": ("swin", dict(BACKBONE_DEFAULTS["swin"])),
        "swin_large": ("swin", {**BACKBONE_DEFAULTS["swin"], **swin_large}),
    }


_RELEASED = ("resnet50", "hrnet_w32", "mit_b0", "swin_tiny", "swin_large")

# The original checkpoint (spec section 4) that each preset converts from.
ORIGINAL_CONFIG_NAMES = {
    "resnet50": "dynamite_R50_bs32_ep50",
    "hrnet_w32": "dynamite_hrnet32_bs32_ep50",
    "mit_b0": "dynamite_mitb0_bs32_ep50",
    "swin_tiny": "dynamite_swin_tiny_bs32_ep50",
    "swin_large": "dynamite_swin_large_bs32_ep100",
}

# The CPU-friendly preset: an ImageNet MobileNetV2 and a narrow head, sized so that one click (interactive
# transformer + post-processing to full resolution) stays under 150 ms on a 2-core CPU at its working size
# (shortest edge 448, `DynamiteImageProcessor.from_preset`). A click's cost is dominated by the decoder over every stride-4 pixel (hidden_dim x
# decoder FFN x pixels) and the mask heads. Measured medians at 448x672 (scripts/benchmark.py, 2 threads):
# two decoder layers 175 ms, two with FFN 128 134 ms, one layer with FFN 256 114 ms (chosen, leaving margin);
# at 512x768 the chosen head takes 151 ms.
_MOBILE_PRESET: dict[str, Any] = {
    "backbone_type": "mobilenet_v2",
    "backbone_config": {"width_multiplier": 1.0},
    "hidden_dim": 128,
    "num_heads": 4,
    "encoder_layers": 6,
    "encoder_ffn_dim": 512,
    "decoder_layers": 1,
    "decoder_ffn_dim": 256,
    "pixel_decoder_dim": 128,
    "pixel_decoder_layers": 3,
    "pixel_decoder_ffn_dim": 512,
    "pixel_decoder_num_heads": 4,
    "num_static_bg_queries": 9,
}

PRESETS = (*_RELEASED, "mobilenet_v2")

# Settings of the image processor that `config.json` held before `preprocessor_config.json` became their one home.
LEGACY_PROCESSOR_KEYS = (
    "use_imagenet_backbone",
    "pixel_mean",
    "pixel_std",
    "size_divisibility",
    "test_short_edge",
    "test_max_size",
    "guided_filter_radius",
    "guided_filter_eps",
    "guided_filter_temperature",
)


class DynamiteConfig(PretrainedConfig):
    r"""Configuration of a [`DynamiteModel`]: backbone, pixel decoder and interactive transformer.

    The defaults reproduce the released ResNet-50 model; use [`DynamiteConfig.from_preset`] for the others.

    Args:
        backbone_type (`str`, *optional*, defaults to `"resnet"`):
            Backbone family: `"resnet"`, `"swin"`, `"mit"`, `"hrnet"` or `"mobilenet_v2"`.
        backbone_config (`dict`, *optional*):
            Hyper-parameters of the backbone family (JSON-serialisable). Missing keys take the released
            model's values; see the `build` function of each `backbone_*.py` module beside this file.
        hidden_dim (`int`, *optional*, defaults to 256):
            Width of the interactive transformer (queries, mask embedding, mask features).
        num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the interactive transformer.
        encoder_layers (`int`, *optional*, defaults to 9):
            Masked-attention encoder layers (`ENC_LAYERS - 1` in the original); they visit the three
            multi-scale levels round-robin, coarsest first.
        encoder_ffn_dim (`int`, *optional*, defaults to 2048):
            Hidden width of the encoder feed-forward layers.
        decoder_layers (`int`, *optional*, defaults to 5):
            Reverse cross-attention layers in which every stride-4 pixel attends to the queries; 0 disables
            the decoder (the final prediction then uses the pixel-decoder mask features).
        decoder_ffn_dim (`int`, *optional*, defaults to 512):
            Hidden width of the decoder feed-forward layers (`2 * hidden_dim` in the original).
        num_static_bg_queries (`int`, *optional*, defaults to 9):
            Learned background queries appended after the click queries; 0 disables them.
        positional_embedding (`str`, *optional*, defaults to `"spatio_temporal"`):
            Click positional encoding: `"spatio_temporal"` (y, x, t), `"spatial"` (y, x), `"temporal"` (t) or
            `"none"` (only the shared learned query embedding).
        temporal_norm (`int`, *optional*, defaults to 500):
            Click timestamps are divided by `max(max_timestamp, temporal_norm)` before the sine encoding.
        pixel_decoder_dim (`int`, *optional*, defaults to 256):
            Channels of the pixel decoder (`CONVS_DIM`); also the mask-feature channels fed to the head.
        pixel_decoder_layers (`int`, *optional*, defaults to 6):
            Multi-scale deformable-attention encoder layers of the pixel decoder.
        pixel_decoder_ffn_dim (`int`, *optional*, defaults to 1024):
            Feed-forward width of the deformable encoder layers.
        pixel_decoder_num_heads (`int`, *optional*, defaults to 8):
            Heads of the deformable attention.
        pixel_decoder_num_points (`int`, *optional*, defaults to 4):
            Sampling points per head and level of the deformable attention.
        pixel_decoder_num_fpn_levels (`int`, *optional*, defaults to 1):
            Lateral FPN levels built on top of the deformable encoder (1: the stride-4 level). The released
            HRNet model has 2 (its declared strides were all 1, so the original built an extra level on the
            stride-8 features, `adapter_2`/`layer_2`).
        refine_mask_features (`bool`, *optional*, defaults to `True`):
            Add DynaMITe's refine branch that fuses the strides 8/16/32 into the mask features.
        group_norm_groups (`int`, *optional*, defaults to 32):
            Groups of the pixel decoder's GroupNorms.

    Preprocessing (resize, normalisation, padding) and post-processing (boundary refinement) settings are the image
    processor's (`preprocessor_config.json`, [`DynamiteImageProcessor`]); the model takes normalised pixels padded to
    multiples of 32 (its coarsest stride). Legacy keys of those settings in an older `config.json` are dropped.

    Example:

    ```python
    >>> from dynamite_hf import DynamiteConfig, DynamiteModel
    >>> config = DynamiteConfig.from_preset("swin_tiny")
    >>> model = DynamiteModel(config)  # random weights, initialised as the original initialises them
    ```
    """

    model_type = "dynamite"

    def __init__(
        self,
        backbone_type: str = "resnet",
        backbone_config: dict[str, Any] | None = None,
        hidden_dim: int = 256,
        num_heads: int = 8,
        encoder_layers: int = 9,
        encoder_ffn_dim: int = 2048,
        decoder_layers: int = 5,
        decoder_ffn_dim: int = 512,
        num_static_bg_queries: int = 9,
        positional_embedding: str = "spatio_temporal",
        temporal_norm: int = 500,
        pixel_decoder_dim: int = 256,
        pixel_decoder_layers: int = 6,
        pixel_decoder_ffn_dim: int = 1024,
        pixel_decoder_num_heads: int = 8,
        pixel_decoder_num_points: int = 4,
        pixel_decoder_num_fpn_levels: int = 1,
        refine_mask_features: bool = True,
        group_norm_groups: int = 32,
        **kwargs: Any,
    ) -> None:
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}")
        if positional_embedding not in ("spatio_temporal", "spatial", "temporal", "none"):
            raise ValueError(
                "positional_embedding must be 'spatio_temporal', 'spatial', 'temporal' or 'none', "
                f"got {positional_embedding!r}"
            )
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be even and divisible by num_heads ({num_heads})")
        if pixel_decoder_dim != hidden_dim:
            raise ValueError(
                f"pixel_decoder_dim ({pixel_decoder_dim}) must equal hidden_dim ({hidden_dim}): the interactive "
                "transformer reads the pixel-decoder features without an input projection"
            )
        self.backbone_type = backbone_type
        self.backbone_config = dict(backbone_config or {})
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.encoder_layers = encoder_layers
        self.encoder_ffn_dim = encoder_ffn_dim
        self.decoder_layers = decoder_layers
        self.decoder_ffn_dim = decoder_ffn_dim
        self.num_static_bg_queries = num_static_bg_queries
        self.positional_embedding = positional_embedding
        self.temporal_norm = temporal_norm
        self.pixel_decoder_dim = pixel_decoder_dim
        self.pixel_decoder_layers = pixel_decoder_layers
        self.pixel_decoder_ffn_dim = pixel_decoder_ffn_dim
        self.pixel_decoder_num_heads = pixel_decoder_num_heads
        self.pixel_decoder_num_points = pixel_decoder_num_points
        self.pixel_decoder_num_fpn_levels = pixel_decoder_num_fpn_levels
        self.refine_mask_features = refine_mask_features
        self.group_norm_groups = group_norm_groups
        for legacy in LEGACY_PROCESSOR_KEYS:
            kwargs.pop(legacy, None)
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DynamiteConfig:
        """Configuration of a named model: one of `PRESETS`.

        `resnet50`, `hrnet_w32`, `mit_b0`, `swin_tiny` and `swin_large` are the five released DynaMITe models
        (convert their checkpoints with `scripts/convert_original_checkpoint.py`); `mobilenet_v2` is the
        CPU-friendly model of this package. Keyword arguments override preset values.
        """
        if name in _RELEASED:
            backbone_type, backbone_config = _released_backbones()[name]
            values: dict[str, Any] = {"backbone_type": backbone_type, "backbone_config": backbone_config}
            if name == "hrnet_w32":
                values["pixel_decoder_num_fpn_levels"] = 2
        elif name == "mobilenet_v2":
            values = _MOBILE_PRESET
        else:
            raise ValueError(f"Unknown preset {name!r}; expected one of {PRESETS}")
        values = copy.deepcopy(values)
        values.update(overrides)
        return cls(**values)

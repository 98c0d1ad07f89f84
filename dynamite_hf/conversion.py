"""Released DynaMITe checkpoints (detectron2 `.pth`, keys as spec section 4) -> our modules.

Every original key is mapped or the conversion fails, naming the key; after the mapping the model's own keys
must all be covered. `scripts/convert_original_checkpoint.py` is the command-line face of this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .models.dynamite.backbone_swin import relative_position_index
from .models.dynamite.configuration_dynamite import PRESETS, DynamiteConfig

_PIXEL_DECODER_RULES: list[tuple[str, str]] = [
    (r"input_proj\.(\d)\.([01])\.(weight|bias)", r"input_proj.\1.\2.\3"),
    (r"transformer\.level_embed", "level_embed"),
    (r"transformer\.encoder\.layers\.(\d+)\.(.+)", r"encoder_layers.\1.\2"),
    (r"mask_features\.(weight|bias)", r"mask_projection.\1"),
    (r"refine\.(\d)\.(weight|bias)", r"refine.\1.\2"),
]

_TRANSFORMER_RULES: list[tuple[str, str]] = [
    (r"(query_embed|static_bg_pe|static_bg_query|bg_query)", r"\1"),
    (r"level_embed\.weight", "level_embed.weight"),
    (r"queries_nonlinear_projection\.([02])\.(weight|bias)", r"query_projection.\1.\2"),
    (r"ca_qpos_sine_proj\.(weight|bias)", r"click_position_projection.\1"),
    (r"layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"mask_embed\.layers\.(\d)\.(weight|bias)", r"mask_embed.layers.\1.\2"),
    (
        r"encoder\.cross_attention_layers\.(\d+)\.multihead_attn\.(.+)",
        r"encoder_layers.\1.cross_attention.attention.\2",
    ),
    (r"encoder\.cross_attention_layers\.(\d+)\.norm\.(.+)", r"encoder_layers.\1.cross_attention.norm.\2"),
    (r"encoder\.self_attention_layers\.(\d+)\.self_attn\.(.+)", r"encoder_layers.\1.self_attention.attention.\2"),
    (r"encoder\.self_attention_layers\.(\d+)\.norm\.(.+)", r"encoder_layers.\1.self_attention.norm.\2"),
    (r"encoder\.ffn_layers\.(\d+)\.(.+)", r"encoder_layers.\1.ffn.\2"),
    (
        r"decoder\.cross_attention_layers\.(\d+)\.multihead_attn\.(.+)",
        r"decoder_layers.\1.cross_attention.attention.\2",
    ),
    (r"decoder\.cross_attention_layers\.(\d+)\.norm\.(.+)", r"decoder_layers.\1.cross_attention.norm.\2"),
    (r"decoder\.ffn_layers\.(\d+)\.(.+)", r"decoder_layers.\1.ffn.\2"),
]


def _convert_resnet_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """detectron2 names are our names; anything else is refused."""
    converted = {}
    for name, tensor in state_dict.items():
        if not (name.startswith("stem.") or name.split(".")[0] in ("res2", "res3", "res4", "res5")):
            raise KeyError(name)
        converted[name] = tensor
    return converted


def _convert_swin_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original names are ours. `relative_position_index` buffers are recomputed by the model, so a checkpoint's
    copy is only checked against the recomputed one."""
    converted = {}
    for name, tensor in state_dict.items():
        if name.split(".")[0] not in ("patch_embed", "layers", "norm0", "norm1", "norm2", "norm3"):
            raise KeyError(name)
        if name.endswith("relative_position_index"):
            window = int(round(tensor.shape[0] ** 0.5))
            if not torch.equal(tensor.long(), relative_position_index(window)):
                raise ValueError(f"{name} differs from the standard Swin relative position index")
            continue
        converted[name] = tensor
    return converted


def _convert_mit_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original names are ours (the original also strips a `.bottom_up` infix, which we accept)."""
    converted = {}
    for name, tensor in state_dict.items():
        name = name.replace(".bottom_up", "").removeprefix("bottom_up.")
        if name.split(".")[0].rstrip("1234") not in ("patch_embed", "block", "norm"):
            raise KeyError(name)
        converted[name] = tensor
    return converted


def _convert_hrnet_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original names are ours."""
    roots = {"conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3"}
    roots |= {"stage2", "stage3", "stage4"}
    converted = {}
    for name, tensor in state_dict.items():
        if name.split(".")[0] not in roots:
            raise KeyError(name)
        converted[name] = tensor
    return converted


_BACKBONE_CONVERTERS = {
    "resnet": _convert_resnet_backbone,
    "swin": _convert_swin_backbone,
    "mit": _convert_mit_backbone,
    "hrnet": _convert_hrnet_backbone,
}


def convert_backbone_state_dict(backbone_type: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map original backbone keys (`backbone.` prefix stripped) to ours; `KeyError` names a key with no place."""
    if backbone_type not in _BACKBONE_CONVERTERS:
        raise KeyError(f"there is no released DynaMITe checkpoint with a {backbone_type!r} backbone")
    return _BACKBONE_CONVERTERS[backbone_type](state_dict)


def _fpn_rule(name: str) -> str | None:
    # adapter_k / layer_k act on backbone level k-1 (adapter_2/layer_2 exist only in the released HRNet).
    match = re.fullmatch(r"(adapter|layer)_(\d)\.(weight|norm\.weight|norm\.bias)", name)
    if match is None:
        return None
    kind, level, rest = match.groups()
    module = "fpn_lateral" if kind == "adapter" else "fpn_output"
    rest = "conv.weight" if rest == "weight" else rest
    return f"{module}.{int(level) - 1}.{rest}"


def _apply_rules(name: str, rules: list[tuple[str, str]], extra: Callable[[str], str | None] | None = None) -> str:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    if extra is not None and (mapped := extra(name)) is not None:
        return mapped
    raise KeyError(name)


def _split_in_projection(name: str, tensor: Tensor) -> dict[str, Tensor]:
    """`...attention.in_proj_{weight,bias}` (q, k, v stacked) -> `...attention.{q,k,v}_proj.{weight,bias}`."""
    prefix, kind = name.rsplit(".in_proj_", 1)
    return {f"{prefix}.{part}_proj.{kind}": chunk for part, chunk in zip("qkv", tensor.chunk(3, dim=0))}


def convert_original_state_dict(original: Mapping[str, Tensor], config: DynamiteConfig) -> dict[str, Tensor]:
    """Map a released checkpoint's `["model"]` state dict to `DynamiteModel` keys.

    Raises:
        KeyError: naming every original key that has no place in our model.
    """
    converted: dict[str, Tensor] = {}
    backbone: dict[str, Tensor] = {}
    unknown: list[str] = []
    for name, tensor in original.items():
        if name in ("pixel_mean", "pixel_std"):
            continue  # constants of the config, not weights (absent from the released files anyway)
        try:
            if name.startswith("backbone."):
                backbone[name[len("backbone.") :]] = tensor
            elif name.startswith("sem_seg_head.pixel_decoder."):
                mapped = _apply_rules(name[len("sem_seg_head.pixel_decoder.") :], _PIXEL_DECODER_RULES, _fpn_rule)
                converted[f"pixel_decoder.{mapped}"] = tensor
            elif name.startswith("sem_seg_head.interactive_transformer."):
                mapped = "interactive_transformer." + _apply_rules(
                    name[len("sem_seg_head.interactive_transformer.") :], _TRANSFORMER_RULES
                )
                if ".in_proj_" in mapped:
                    converted.update(_split_in_projection(mapped, tensor))
                else:
                    converted[mapped] = tensor
            else:
                raise KeyError(name)
        except KeyError:
            unknown.append(name)
    if unknown:
        raise KeyError(
            f"{len(unknown)} checkpoint key(s) have no place in a DynamiteModel ({config.backbone_type} backbone): "
            + ", ".join(unknown[:10])
            + (" ..." if len(unknown) > 10 else "")
        )
    try:
        backbone_converted = convert_backbone_state_dict(config.backbone_type, backbone)
    except KeyError as error:
        raise KeyError(f"backbone key not recognised for backbone_type {config.backbone_type!r}: {error}") from None
    converted.update({f"backbone.{k}": v for k, v in backbone_converted.items()})
    return converted


def load_original_state_dict(model: torch.nn.Module, original: Mapping[str, Tensor]) -> None:
    """Convert `original` and load it into `model`; fail on any missing or unexpected key or shape."""
    converted = convert_original_state_dict(original, model.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in converted and converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
    if wrong_shape:
        problems.append(f"shape mismatch: {'; '.join(wrong_shape[:5])}")
    if problems:
        raise KeyError("Checkpoint does not fit the model: " + " | ".join(problems))
    model.load_state_dict(converted, strict=True)


def read_original_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a released `.pth` safely (`weights_only=True`: no code from the pickle runs) -> its state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return state_dict


def infer_preset(original: Mapping[str, Tensor]) -> str:
    """Which released model a checkpoint is, from its backbone keys."""
    if "backbone.stem.conv1.weight" in original:
        return "resnet50"
    if "backbone.patch_embed1.proj.weight" in original:
        return "mit_b0"
    if "backbone.stage4.0.branches.0.0.conv1.weight" in original or "backbone.transition1.0.0.weight" in original:
        return "hrnet_w32"
    if "backbone.patch_embed.proj.weight" in original:
        width = original["backbone.patch_embed.proj.weight"].shape[0]
        return {96: "swin_tiny", 192: "swin_large"}.get(width) or _unknown(f"Swin with embed dim {width}")
    return _unknown("backbone keys " + ", ".join(sorted(k for k in original if k.startswith("backbone."))[:3]))


def _unknown(what: str) -> str:
    raise ValueError(f"Cannot tell which released DynaMITe model this checkpoint is ({what}); pass one of {PRESETS}")

"""Mix Transformer (SegFormer's encoder, MiT-B0 in the released model) as DynaMITe uses it.

Module names follow the original (`patch_embed1`, `block1.0.attn.q`, `norm1`, ...), so a released checkpoint
maps one to one. Stage 1 (`patch_embed1`, `block1`, `norm1`) is frozen, as in the original. The block and stage
norms use LayerNorm eps 1e-6; the patch-embedding and spatial-reduction norms keep PyTorch's 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .attention import attention_function
from .configuration_dynamite import BACKBONE_DEFAULTS, merge_backbone_config

_DEFAULTS = BACKBONE_DEFAULTS["mit"]


def drop_path(x: Tensor, probability: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample while training."""
    if probability == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - probability)
    return x * keep / (1 - probability)


class DynamiteMiTOverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class DynamiteMiTAttention(nn.Module):
    """Self-attention whose keys/values come from a spatially reduced (strided conv) copy of the tokens."""

    def __init__(self, config: PretrainedConfig, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.config = config  # its `_attn_implementation` picks the attention function
        self.is_causal = False
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, length, heads, dim // heads).permute(0, 2, 1, 3)
        source = x
        if self.sr_ratio > 1:
            source = self.sr(x.permute(0, 2, 1).reshape(batch, dim, height, width)).reshape(batch, dim, -1)
            source = self.norm(source.permute(0, 2, 1))
        k, v = self.kv(source).reshape(batch, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attended, _ = attention_function(self.config)(self, q, k, v, None, scaling=self.scale)
        return self.proj(attended.reshape(batch, length, dim))


class DynamiteMiTDepthwiseConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, _, dim = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(batch, dim, height, width)).flatten(2).transpose(1, 2)


class DynamiteMiTMixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DynamiteMiTDepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class DynamiteMiTBlock(nn.Module):
    def __init__(
        self, config: PretrainedConfig, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DynamiteMiTAttention(config, dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DynamiteMiTMixFFN(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x), height, width), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x), height, width), self.drop_path_rate, self.training)


class DynamiteMiTBackbone(nn.Module):
    """MiT returning `mit1..mit4` (strides 4, 8, 16, 32)."""

    def __init__(
        self,
        config: PretrainedConfig,
        embed_dims: list[int],
        num_heads: list[int],
        depths: list[int],
        sr_ratios: list[int],
        mlp_ratio: float,
        drop_path_rate: float,
        freeze_first_stage: bool,
    ) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        in_channels, first = 3, 0
        for stage in range(4):
            kernel, stride = (7, 4) if stage == 0 else (3, 2)
            self.add_module(
                f"patch_embed{stage + 1}",
                DynamiteMiTOverlapPatchEmbed(in_channels, embed_dims[stage], kernel, stride),
            )
            blocks = [
                DynamiteMiTBlock(
                    config, embed_dims[stage], num_heads[stage], mlp_ratio, sr_ratios[stage], rates[first + i]
                )
                for i in range(depths[stage])
            ]
            self.add_module(f"block{stage + 1}", nn.ModuleList(blocks))
            self.add_module(f"norm{stage + 1}", nn.LayerNorm(embed_dims[stage], eps=1e-6))
            in_channels, first = embed_dims[stage], first + depths[stage]
        self.out_channels = tuple(embed_dims)
        if freeze_first_stage:
            for module in (self.patch_embed1, self.block1, self.norm1):
                module.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """`(batch, 3, H, W)` -> four maps `(batch, embed_dims[i], H / s, W / s)` for s = 4, 8, 16, 32."""
        outputs, x = [], pixel_values
        batch = pixel_values.shape[0]
        for stage in range(1, 5):
            x, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x, height, width)
            x = getattr(self, f"norm{stage}")(x).reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append(x)
        return outputs


def build(config: PretrainedConfig) -> DynamiteMiTBackbone:
    """The backbone of `config.backbone_config` (the released MiT-B0 where keys are missing)."""
    return DynamiteMiTBackbone(config, **merge_backbone_config("mit", config.backbone_config, _DEFAULTS))

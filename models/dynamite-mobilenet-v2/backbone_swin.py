"""Swin Transformer as Mask2Former's D2SwinTransformer computes it (Swin-T and Swin-L in the released models).

Module names follow the original (`patch_embed`, `layers.i.blocks.j.attn.qkv`, `norm0..norm3`), so a released
checkpoint maps one to one. As the original: inputs are padded to the patch size, every stage pads its map to
a multiple of the window (even when the map is smaller than one window), shifted blocks use a -100 attention
mask between regions, and each stage output goes through its own LayerNorm before leaving the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .attention import attention_function
from .backbone_mit import drop_path
from .configuration_dynamite import BACKBONE_DEFAULTS, merge_backbone_config

_DEFAULTS = BACKBONE_DEFAULTS["swin"]


def relative_position_index(window: int) -> Tensor:
    """`(window**2, window**2)` index into the `(2 * window - 1)**2` relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """`(batch, H, W, C)` -> `(batch * windows, window * window, C)`."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: -> `(batch, H, W, C)`."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class DynamiteSwinWindowAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.config = config  # its `_attn_implementation` picks the attention function
        self.is_causal = False
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """`x` `(batch * windows, tokens, dim)`; `mask` `(windows, tokens, tokens)` of 0 / -100, or None."""
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)  # (1, heads, tokens, tokens)
        if mask is not None:
            bias = (bias.unsqueeze(0) + mask[None, :, None]).reshape(1, -1, self.num_heads, tokens, tokens)
            bias = bias.expand(windows // mask.shape[0], -1, -1, -1, -1).reshape(
                windows, self.num_heads, tokens, tokens
            )
        attended, _ = attention_function(self.config)(self, q, k, v, bias, scaling=self.scale)
        return self.proj(attended.reshape(windows, tokens, dim))


class DynamiteSwinMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DynamiteSwinBlock(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DynamiteSwinWindowAttention(config, dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DynamiteSwinMLP(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, height: int, width: int, mask: Tensor) -> Tensor:
        batch, _, dim = x.shape
        window = self.window
        shortcut = x
        x = self.norm1(x).view(batch, height, width, dim)
        x = F.pad(x, (0, 0, 0, (window - width % window) % window, 0, (window - height % window) % window))
        _, padded_height, padded_width, _ = x.shape
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(window_partition(x, window), mask if self.shift > 0 else None)
        x = window_reverse(x, window, padded_height, padded_width)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(batch, height * width, dim)
        x = shortcut + drop_path(x, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class DynamiteSwinPatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, _, dim = x.shape
        x = F.pad(x.view(batch, height, width, dim), (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(batch, -1, 4 * dim)))


class DynamiteSwinStage(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        rates: list[float],
        merge: bool,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            DynamiteSwinBlock(config, dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, rates[i])
            for i in range(depth)
        )
        self.downsample = DynamiteSwinPatchMerging(dim) if merge else None

    def shift_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """`(windows, tokens, tokens)`: -100 between tokens from different regions of the rolled map."""
        window, shift = self.window, self.shift
        padded_height, padded_width = -(-height // window) * window, -(-width // window) * window
        regions = torch.zeros((1, padded_height, padded_width, 1), device=device)
        slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for index, (rows, cols) in enumerate((r, c) for r in slices for c in slices):
            regions[:, rows, cols, :] = index
        windows = window_partition(regions, window).squeeze(-1)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: Tensor, height: int, width: int) -> tuple[Tensor, Tensor | None]:
        mask = self.shift_mask(height, width, x.device)
        for block in self.blocks:
            x = block(x, height, width, mask)
        return x, (self.downsample(x, height, width) if self.downsample is not None else None)


class DynamiteSwinPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        size = self.patch_size
        x = F.pad(x, (0, (size - x.shape[-1] % size) % size, 0, (size - x.shape[-2] % size) % size))
        x = self.proj(x)
        batch, dim, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(batch, dim, height, width)


class DynamiteSwinBackbone(nn.Module):
    """Swin returning `res2..res5` (strides 4, 8, 16, 32), each after its stage's output LayerNorm."""

    def __init__(
        self,
        config: PretrainedConfig,
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window_size: int,
        mlp_ratio: float,
        drop_path_rate: float,
        pretrain_img_size: int,
        patch_size: int,
    ) -> None:
        super().__init__()
        self.patch_embed = DynamiteSwinPatchEmbed(patch_size, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList(
            DynamiteSwinStage(
                config,
                dims[i],
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                rates[sum(depths[:i]) : sum(depths[: i + 1])],
                merge=i < len(depths) - 1,
            )
            for i in range(len(depths))
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.out_channels = tuple(dims)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """`(batch, 3, H, W)` -> four maps `(batch, embed_dim * 2**i, H / s, W / s)` for s = 4, 8, 16, 32."""
        x = self.patch_embed(pixel_values)
        batch, _, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        outputs = []
        for index, stage in enumerate(self.layers):
            stage_output, x = stage(x, height, width)
            stage_output = getattr(self, f"norm{index}")(stage_output)
            outputs.append(stage_output.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous())
            height, width = (height + 1) // 2, (width + 1) // 2
        return outputs


def build(config: PretrainedConfig) -> DynamiteSwinBackbone:
    """The backbone of `config.backbone_config` (the released Swin-T where keys are missing)."""
    return DynamiteSwinBackbone(config, **merge_backbone_config("swin", config.backbone_config, _DEFAULTS))

"""Scaled dot-product attention as the original computes it, and the choice of implementation the transformers way.

Every attention of the model (the backbones' and the interactive transformer's) calls `attention_function(config)`,
which returns `eager_attention_forward` for `config._attn_implementation == "eager"` and transformers' registered
function otherwise (`"sdpa"`: `torch.nn.functional.scaled_dot_product_attention`, the default). Pick one with
`DynamiteModel.from_pretrained(..., attn_implementation="eager")` or `model.set_attn_implementation("eager")`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """`torch.nn.MultiheadAttention`'s explicit computation (the original's): the queries scaled, their product with
    the keys, the mask, a softmax over the keys, the product with the values.

    Args:
        query: `(batch, heads, query_length, head_dim)`; `key`, `value`: `(batch, heads, key_length, head_dim)`.
        attention_mask: broadcastable to `(batch, heads, query_length, key_length)`; bool (True where a query may
            look) or float (added to the scores); None: every query sees every key.
        scaling: the factor of the queries (`head_dim ** -0.5`).

    Returns:
        The attended values `(batch, query_length, heads, head_dim)` and the weights `(batch, heads, query_length,
        key_length)`.
    """
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    weights = scores.softmax(-1)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def attention_function(config: PretrainedConfig) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The attention function `config._attn_implementation` names (`eager_attention_forward`'s signature)."""
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)

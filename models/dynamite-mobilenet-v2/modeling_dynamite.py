"""DynaMITe as a transformers `PreTrainedModel`: backbone -> pixel decoder (once per image) -> interactive
transformer (once per click) -> per-query mask logits.

Reads top-down: the outputs, the click ordering, the pretrained-model base (weight initialisation as the original
does it), the model. Turning logits into instance masks is the image processor's `post_process_masks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput, can_return_tuple

# `from .module import name` only: transformers finds the files a model needs as remote code by these imports.
from .backbone_hrnet import DynamiteHRNetBackbone
from .backbone_hrnet import build as build_hrnet
from .backbone_mit import DynamiteMiTBackbone
from .backbone_mit import build as build_mit
from .backbone_mobilenet_v2 import DynamiteMobileNetV2Backbone
from .backbone_mobilenet_v2 import build as build_mobilenet_v2
from .backbone_resnet import DynamiteConvNormReLU, DynamiteFrozenBatchNorm2d
from .backbone_resnet import build as build_resnet
from .backbone_swin import DynamiteSwinBackbone, DynamiteSwinWindowAttention
from .backbone_swin import build as build_swin
from .configuration_dynamite import DynamiteConfig
from .interactive_transformer import (
    PAD_LABEL,
    DynamiteAttention,
    DynamiteFeedForward,
    DynamiteInteractiveTransformer,
)
from .pixel_decoder import DynamiteConvNorm, DynamiteMultiscaleDeformableAttention, DynamitePixelDecoder

# The model's coarsest stride: inputs are padded to multiples of it.
SIZE_DIVISIBILITY = 32

_BACKBONE_BUILDERS = {
    "resnet": build_resnet,
    "swin": build_swin,
    "mit": build_mit,
    "hrnet": build_hrnet,
    "mobilenet_v2": build_mobilenet_v2,
}


@dataclass
class DynamiteImageEmbeddings(ModelOutput):
    """What a click needs from the image, computed once by `DynamiteModel.get_image_embeddings`.

    Attributes:
        mask_features (`torch.FloatTensor` of shape `(batch_size, hidden_dim, height / 4, width / 4)`):
            The pixel decoder's mask features (stride 4 of the padded input).
        multi_scale_features (`tuple[torch.FloatTensor]`):
            The pixel decoder's maps at strides 32, 16 and 8, each `(batch_size, hidden_dim, height / s, width / s)`.
    """

    mask_features: Tensor | None = None
    multi_scale_features: tuple[Tensor, ...] | None = None

    @property
    def padded_size(self) -> tuple[int, int]:
        """`(height, width)` of the padded input these features were computed from."""
        return 4 * self.mask_features.shape[-2], 4 * self.mask_features.shape[-1]

    def nbytes(self) -> int:
        """Bytes held by these features (each tensor storage counted once): what caching one image costs."""
        storages = {}
        for tensor in (self.mask_features, *(self.multi_scale_features or ())):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


@dataclass
class DynamiteModelOutput(ModelOutput):
    """Output of `DynamiteModel.forward`.

    Attributes:
        pred_masks (`torch.FloatTensor` of shape `(batch_size, num_queries, height / 4, width / 4)`):
            Per-query mask logits at stride 4 of the padded input. Query order: instance 1's clicks, instance 2's,
            ..., the background clicks, batch padding slots, then the static background queries.
        query_labels (`torch.LongTensor` of shape `(batch_size, num_queries)`):
            The instance (1, 2, ...) each query stands for, 0 for background queries (background clicks, padding
            slots, static queries): how `DynamiteImageProcessor.post_process_masks` fuses queries into instances.
        auxiliary_logits (`tuple[torch.FloatTensor]`, *optional*):
            With `output_auxiliary_logits=True`: the earlier predictions (the initial queries', then each encoder
            layer's), shaped as `pred_masks`; training supervises them.
        image_embeddings (`DynamiteImageEmbeddings`):
            The image's features used, to pass back for the next click.
    """

    pred_masks: Tensor | None = None
    query_labels: Tensor | None = None
    auxiliary_logits: tuple[Tensor, ...] | None = None
    image_embeddings: DynamiteImageEmbeddings | None = None


def order_clicks(
    input_points: Tensor, input_labels: Tensor, input_timestamps: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Clicks in query order, as the original queries them: instance 1's clicks, instance 2's, ..., then the
    background clicks, each in the order given; then padding, trimmed to the longest list of the batch.

    Args:
        input_points: `(batch, num_clicks, 2)` positions `(x, y)`.
        input_labels: `(batch, num_clicks)`: `k >= 1` a click on instance `k`, 0 a background click, `PAD_LABEL`
            (-10) a padding slot.
        input_timestamps: `(batch, num_clicks)` the global click counter of each click (the order in which the
            user made them). Default: the clicks' order in the list, padding skipped.

    Returns:
        `points`, `labels` and `timestamps` reordered (padding slots keep `PAD_LABEL` and timestamp 0).
    """
    valid = input_labels != PAD_LABEL
    if input_timestamps is None:
        input_timestamps = (valid.cumsum(1) - 1).clamp(min=0)
    input_timestamps = input_timestamps.masked_fill(~valid, 0)
    largest = int(input_labels.max()) + 1 if input_labels.numel() else 1
    key = torch.where(input_labels > 0, input_labels, torch.where(valid, largest, largest + 1))
    order = torch.sort(key, dim=1, stable=True).indices
    length = int(valid.sum(1).max()) if valid.numel() else 0
    order = order[:, :length]
    points = input_points.gather(1, order[..., None].expand(-1, -1, input_points.shape[-1]))
    return points, input_labels.gather(1, order), input_timestamps.gather(1, order)


def check_clicks(
    input_points: Tensor,
    input_labels: Tensor,
    input_timestamps: Tensor | None,
    image_sizes: list[tuple[int, int]],
    frame: str,
) -> None:
    """Raise `ValueError` naming the argument unless the click tensors are well-formed for images of `image_sizes`
    (`(height, width)` each, in the `frame` the message names): matching shapes, labels `PAD_LABEL`, 0 or an
    instance numbered 1..N (each with a click, at least one), every click inside its image."""
    if not isinstance(input_points, Tensor) or input_points.ndim != 3 or input_points.shape[-1] != 2:
        shape = tuple(input_points.shape) if isinstance(input_points, Tensor) else type(input_points).__name__
        raise ValueError(f"input_points must be a (batch, num_clicks, 2) tensor of (x, y), got {shape}")
    if not isinstance(input_labels, Tensor) or input_labels.shape != input_points.shape[:2]:
        shape = tuple(input_labels.shape) if isinstance(input_labels, Tensor) else type(input_labels).__name__
        raise ValueError(f"input_labels must be a (batch, num_clicks) tensor like input_points', got {shape}")
    if input_labels.is_floating_point() or input_labels.dtype == torch.bool:
        raise ValueError(f"input_labels must hold integers (instance k >= 1, 0 background), got {input_labels.dtype}")
    if input_timestamps is not None and (
        not isinstance(input_timestamps, Tensor) or input_timestamps.shape != input_labels.shape
    ):
        shape = tuple(input_timestamps.shape) if isinstance(input_timestamps, Tensor) else type(input_timestamps)
        raise ValueError(f"input_timestamps must be a (batch, num_clicks) tensor like input_labels', got {shape}")
    if len(image_sizes) != input_points.shape[0]:
        raise ValueError(f"input_points holds {input_points.shape[0]} images, the pixel batch {len(image_sizes)}")
    for index, (labels, points, (height, width)) in enumerate(
        zip(input_labels.tolist(), input_points.tolist(), image_sizes, strict=True)
    ):
        bad = sorted({label for label in labels if label < 0 and label != PAD_LABEL})
        if bad:
            raise ValueError(
                f"input_labels[{index}] holds {bad}: a label is an instance k >= 1, 0 (background) or {PAD_LABEL} "
                "(padding)"
            )
        instances = sorted({label for label in labels if label > 0})
        if not instances:
            raise ValueError(
                f"input_labels[{index}] has no click on an instance (a label >= 1): at least one is needed"
            )
        if instances != list(range(1, len(instances) + 1)):
            missing = sorted(set(range(1, instances[-1] + 1)) - set(instances))
            raise ValueError(
                f"input_labels[{index}]: instance(s) {missing} have no clicks; instances must be numbered 1..N "
                f"with a click each (got instances {instances})"
            )
        for click, ((x, y), label) in enumerate(zip(points, labels, strict=True)):
            if label != PAD_LABEL and not (0 <= x < width and 0 <= y < height and math.isfinite(x + y)):
                raise ValueError(
                    f"input_points[{index}][{click}] at (x={x}, y={y}) lies outside the image of {height}x{width} "
                    f"pixels ({frame}; x in [0, {width}), y in [0, {height}))"
                )
    if input_timestamps is not None and bool((input_timestamps.masked_fill(input_labels == PAD_LABEL, 0) < 0).any()):
        raise ValueError("input_timestamps must be >= 0 (the global click counter from 0)")


def clicks_in_query_order(
    image_embeddings: DynamiteImageEmbeddings,
    input_points: Tensor,
    input_labels: Tensor,
    input_timestamps: Tensor | None,
    reshaped_input_sizes: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`forward`'s click arguments checked (`check_clicks`: inside the resized images if their sizes are given,
    else inside the padded input) and put in query order (`order_clicks`), on the features' device."""
    batch = image_embeddings.mask_features.shape[0]
    if reshaped_input_sizes is not None:
        sizes = [tuple(size) for size in torch.as_tensor(reshaped_input_sizes).tolist()]
        frame = "pixels of the resized image, reshaped_input_sizes"
    else:
        sizes, frame = [image_embeddings.padded_size] * batch, "pixels of the padded input"
    check_clicks(input_points, input_labels, input_timestamps, sizes, frame)
    device = image_embeddings.mask_features.device
    return tuple(tensor.to(device) for tensor in order_clicks(input_points, input_labels, input_timestamps))


def query_labels_of(labels: Tensor, num_queries: int) -> Tensor:
    """The `query_labels` `(batch, num_queries)` of clicks in query order `(batch, clicks)`: their labels, padding
    slots and the static background queries that follow them as background (0)."""
    static = labels.new_zeros(labels.shape[0], num_queries - labels.shape[1])
    return torch.cat((labels.clamp(min=0), static), 1)


class DynamitePreTrainedModel(PreTrainedModel):
    config_class = DynamiteConfig
    base_model_prefix = "dynamite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DynamiteEncoderLayer", "DynamiteDecoderLayer", "DynamiteDeformableEncoderLayer"]
    _supports_sdpa = True

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers skips modules without parameters of their own in code outside its package (custom code might
        # overwrite loaded weights); every rule of `_init_weights` goes through `transformers.initialization`, which
        # leaves loaded tensors alone, and several rules live on such containers (an attention's projections).
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise `module` as the original does (Mask2Former's and DynaMITe's `_reset_parameters`, detectron2's
        `c2_xavier_fill`, each backbone's own scheme), for a model built from a config and for the weights a
        checkpoint lacks."""
        if isinstance(module, DynamiteAttention):
            # The original's nn.MultiheadAttention packs q, k and v in one (3 dim, dim) matrix, xavier-filled as a
            # whole: per block that is xavier with gain sqrt(1/2).
            for projection in (module.q_proj, module.k_proj, module.v_proj):
                init.xavier_uniform_(projection.weight, gain=math.sqrt(0.5))
                init.zeros_(projection.bias)
            init.xavier_uniform_(module.out_proj.weight)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, DynamiteFeedForward):
            for linear in (module.linear1, module.linear2):
                _default_linear_init(linear)
                init.xavier_uniform_(linear.weight)
        elif isinstance(module, DynamiteInteractiveTransformer):
            init.normal_(module.query_embed)
            if module.num_static_bg_queries > 0:
                init.normal_(module.static_bg_pe)
                init.xavier_uniform_(module.static_bg_query)
            init.zeros_(module.bg_query)
            init.normal_(module.level_embed.weight)
        elif isinstance(module, DynamiteMultiscaleDeformableAttention):
            # Deformable DETR's: offsets start on rings around the reference point, uniform attention.
            init.zeros_(module.sampling_offsets.weight)
            thetas = torch.arange(module.num_heads, dtype=torch.float32) * (2.0 * math.pi / module.num_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(module.num_heads, 1, 1, 2)
            grid = grid.repeat(1, module.num_levels, module.num_points, 1)
            for point in range(module.num_points):
                grid[:, :, point, :] *= point + 1
            init.copy_(module.sampling_offsets.bias, grid.view(-1))
            init.zeros_(module.attention_weights.weight)
            init.zeros_(module.attention_weights.bias)
            for linear in (module.value_proj, module.output_proj):
                init.xavier_uniform_(linear.weight)
                init.zeros_(linear.bias)
        elif isinstance(module, DynamitePixelDecoder):
            init.normal_(module.level_embed)
            for projection in module.input_proj:
                init.xavier_uniform_(projection[0].weight)
                init.zeros_(projection[0].bias)
            for layer in module.encoder_layers:  # the deformable encoder's other matrices: xavier
                for linear in (layer.linear1, layer.linear2):
                    _default_linear_init(linear)
                    init.xavier_uniform_(linear.weight)
            init.kaiming_uniform_(module.mask_projection.weight, a=1)  # c2_xavier_fill
            init.zeros_(module.mask_projection.bias)
            for conv in module.refine or ():  # plain nn.Conv2d in the original
                _default_conv_init(conv)
        elif isinstance(module, DynamiteConvNorm):
            init.kaiming_uniform_(module.conv.weight, a=1)  # c2_xavier_fill
        elif isinstance(module, DynamiteConvNormReLU):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # c2_msra_fill
        elif isinstance(module, DynamiteFrozenBatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.constant_(module.running_var, 1.0 - module.eps)
        elif isinstance(module, DynamiteSwinWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            for linear in (module.qkv, module.proj):
                init.trunc_normal_(linear.weight, std=0.02)
                init.zeros_(linear.bias)
        elif isinstance(module, (DynamiteSwinBackbone, DynamiteMiTBackbone)):
            # Swin's and SegFormer's own `_init_weights`: linears truncated normal (std 0.02); MiT's convolutions
            # normal with std sqrt(2 / fan_out).
            for child in module.modules():
                if isinstance(child, nn.Linear) and not isinstance(child.weight, nn.parameter.UninitializedParameter):
                    init.trunc_normal_(child.weight, std=0.02)
                    if child.bias is not None:
                        init.zeros_(child.bias)
                elif isinstance(child, nn.Conv2d) and isinstance(module, DynamiteMiTBackbone):
                    fan_out = child.kernel_size[0] * child.kernel_size[1] * child.out_channels // child.groups
                    init.normal_(child.weight, std=math.sqrt(2.0 / fan_out))
                    if child.bias is not None:
                        init.zeros_(child.bias)
        elif isinstance(module, DynamiteMobileNetV2Backbone):
            for child in module.modules():  # torchvision's MobileNetV2
                if isinstance(child, nn.Conv2d):
                    init.kaiming_normal_(child.weight, mode="fan_out")
        elif isinstance(module, DynamiteHRNetBackbone):
            for child in module.modules():  # HigherHRNet's `init_weights`
                if isinstance(child, nn.Conv2d):
                    init.normal_(child.weight, std=0.001)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            _default_linear_init(module)  # the query projection, click encoding projection, mask MLP
        elif isinstance(module, nn.Conv2d):
            _default_conv_init(module)


def _default_linear_init(linear: nn.Linear) -> None:
    """`nn.Linear`'s own initialisation (kaiming uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in))."""
    init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
    if linear.bias is not None:
        bound = 1.0 / math.sqrt(linear.in_features)
        init.uniform_(linear.bias, -bound, bound)


def _default_conv_init(conv: nn.Conv2d) -> None:
    """`nn.Conv2d`'s own initialisation."""
    init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
    if conv.bias is not None:
        fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        init.uniform_(conv.bias, -bound, bound)


class DynamiteModel(DynamitePreTrainedModel):
    """DynaMITe: several instances segmented at once from clicks.

    The expensive stage (`get_image_embeddings`: backbone + pixel decoder) runs once per image; `forward` with
    `image_embeddings` then runs only the interactive transformer. Inputs come from `DynamiteProcessor`.

    Example:

    ```python
    >>> from PIL import Image
    >>> from dynamite_hf import DynamiteModel, DynamiteProcessor
    >>> model = DynamiteModel.from_pretrained("models/dynamite-mobilenet-v2")
    >>> processor = DynamiteProcessor.from_pretrained("models/dynamite-mobilenet-v2")
    >>> image = Image.open("photo.jpg")
    >>> # two instances: (x, y) points in the photo's pixels; label k = instance k, 0 = background
    >>> inputs = processor(image, input_points=[[[120, 300], [400, 80], [10, 10]]], input_labels=[[1, 2, 0]])
    >>> outputs = model(**inputs)
    >>> result = processor.post_process_masks(outputs, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    >>> result["masks"].shape  # (2, height, width) bool, one per instance, non-overlapping
    ```
    """

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__(config)
        self.backbone = _BACKBONE_BUILDERS[config.backbone_type](config)
        self.pixel_decoder = DynamitePixelDecoder(config, tuple(self.backbone.out_channels))
        self.interactive_transformer = DynamiteInteractiveTransformer(config)
        self.post_init()

    def _check_pixel_values(self, pixel_values: Tensor) -> None:
        if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor, got {shape}")
        if pixel_values.shape[-2] % SIZE_DIVISIBILITY or pixel_values.shape[-1] % SIZE_DIVISIBILITY:
            raise ValueError(
                f"pixel_values height and width must be multiples of {SIZE_DIVISIBILITY} (pad them, e.g. with "
                f"DynamiteImageProcessor), got {tuple(pixel_values.shape[-2:])}"
            )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; when the config names the pipeline (`custom_pipelines`, as a config
        loaded from a model folder of this project does), the pipeline's code is written beside the model's, so the
        saved folder loads with `pipeline(..., trust_remote_code=True)` too."""
        quantized = sorted({type(m).__name__ for m in self.modules() if "quantized" in type(m).__module__})
        if quantized:
            raise ValueError(
                f"this model has quantized layers ({', '.join(quantized)}, from dynamite_hf.inference.int8) and "
                "cannot be saved: save the float32 model and quantize after loading"
            )
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if getattr(self.config, "custom_pipelines", None):
            # Imported here, not at the top: the model does not need the pipeline, only its file (transformers also
            # copies this file into the remote-code cache with the model's, by this import line).
            from .pipeline_dynamite import DynamiteImageSegmentationPipeline

            custom_object_save(DynamiteImageSegmentationPipeline, save_directory)
        return result

    def get_image_embeddings(self, pixel_values: Tensor) -> DynamiteImageEmbeddings:
        """The per-image stage: backbone and pixel decoder.

        Args:
            pixel_values: `(batch, 3, height, width)` normalised, zero-padded to multiples of 32.
        """
        self._check_pixel_values(pixel_values)
        backbone_features = self.backbone(pixel_values)
        # Mixed precision keeps the deformable-attention pixel decoder in float32, as the original does.
        with torch.autocast(pixel_values.device.type, enabled=False):
            mask_features, multi_scale_features = self.pixel_decoder([f.float() for f in backbone_features])
        return DynamiteImageEmbeddings(mask_features=mask_features, multi_scale_features=tuple(multi_scale_features))

    @can_return_tuple
    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        input_timestamps: Tensor | None = None,
        image_embeddings: DynamiteImageEmbeddings | None = None,
        reshaped_input_sizes: Tensor | None = None,
        original_sizes: Tensor | None = None,
        output_auxiliary_logits: bool = False,
    ) -> DynamiteModelOutput:
        r"""Per-query mask logits of the clicked instances.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Normalised pixels padded to multiples of 32 (`DynamiteImageProcessor`). Give this (a new image) or
                `image_embeddings` (an image seen before: only the interactive transformer runs).
            input_points (`torch.FloatTensor` of shape `(batch_size, num_clicks, 2)`):
                Click positions `(x, y)` in pixels of `pixel_values` (the resized image; `DynamiteProcessor` maps
                them from the original image), continuous: `(10.5, 3.5)` is the centre of pixel column 10, row 3.
            input_labels (`torch.LongTensor` of shape `(batch_size, num_clicks)`):
                What each click is: `k >= 1` a positive click on instance `k` (instances numbered 1..N, each with a
                click), `0` a background (negative) click, `-10` a padding slot (images with fewer clicks).
                Numbered as the label map `post_process_masks` returns: 0 background, `k` instance `k`.
            input_timestamps (`torch.LongTensor` of shape `(batch_size, num_clicks)`, *optional*):
                The global click counter of each click (0 for the first click made on the image), which feeds the
                temporal part of the click encoding. Default: the order of the clicks in the list.
            image_embeddings (`DynamiteImageEmbeddings`, *optional*):
                The output of `get_image_embeddings` (or an earlier output's `image_embeddings`).
            reshaped_input_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
                `(height, width)` of each resized image inside the padding (the processor returns it): clicks must
                lie inside it. Without it, inside the padded size.
            original_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
                Unused here (the processor returns it for `post_process_masks`), accepted so that
                `model(**processor(...))` works.
            output_auxiliary_logits (`bool`, *optional*, defaults to `False`):
                Also return the intermediate predictions (training supervises them).
        """
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Give exactly one of pixel_values (a new image) or image_embeddings (cached features)")
        if input_points is None or input_labels is None:
            raise ValueError("input_points and input_labels are required: at least one click on an instance")
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        points, labels, timestamps = clicks_in_query_order(
            image_embeddings, input_points, input_labels, input_timestamps, reshaped_input_sizes
        )
        pred_masks, auxiliary = self.interactive_transformer(
            image_embeddings.multi_scale_features,
            image_embeddings.mask_features,
            points,
            labels,
            timestamps,
            image_embeddings.padded_size,
        )
        return DynamiteModelOutput(
            pred_masks=pred_masks,
            query_labels=query_labels_of(labels, pred_masks.shape[1]),
            auxiliary_logits=tuple(auxiliary) if output_auxiliary_logits else None,
            image_embeddings=image_embeddings,
        )


__all__ = [
    "DynamiteImageEmbeddings",
    "DynamiteModel",
    "DynamiteModelOutput",
    "DynamitePreTrainedModel",
    "order_clicks",
]

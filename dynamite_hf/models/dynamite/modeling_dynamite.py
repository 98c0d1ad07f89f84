"""DynaMITe as a transformers `PreTrainedModel`: backbone -> pixel decoder (once per image) -> interactive
transformer (once per click) -> instance masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ...clicks import Click, check_clicks_inside, order_clicks
from .configuration_dynamite import DynamiteConfig
from .interactive_transformer import (
    DynamiteInteractiveTransformer,
    DynamiteQueryBatch,
    DynamiteTransformerMemory,
)
from .pixel_decoder import DynamitePixelDecoder


def _backbone_family(backbone_type: str):
    """The module of a backbone family (one `backbone_*.py` file each)."""
    from . import backbone_hrnet, backbone_mit, backbone_mobilenet_v2, backbone_resnet, backbone_swin

    families = {
        "resnet": backbone_resnet,
        "swin": backbone_swin,
        "mit": backbone_mit,
        "hrnet": backbone_hrnet,
        "mobilenet_v2": backbone_mobilenet_v2,
    }
    return families[backbone_type]


def build_backbone(config: DynamiteConfig) -> nn.Module:
    """The backbone named by `config.backbone_type`, built with `config.backbone_config`."""
    return _backbone_family(config.backbone_type).build(config.backbone_config)


@dataclass
class DynamiteImageFeatures(ModelOutput):
    """What a click needs from the image: computed once per image by `DynamiteModel.get_image_features`.

    Attributes:
        mask_features (`torch.FloatTensor` of shape `(batch_size, hidden_dim, height / 4, width / 4)`):
            Pixel-decoder mask features (stride 4 of the padded input).
        multi_scale_features (`tuple[torch.FloatTensor]`):
            Pixel-decoder maps at strides 32, 16 and 8, each `(batch_size, hidden_dim, height / s, width / s)`.
        memory (`DynamiteTransformerMemory`):
            The click-independent projections of the interactive transformer.
        padded_size (`tuple[int, int]`):
            `(height, width)` of the padded input.
    """

    mask_features: Tensor | None = None
    multi_scale_features: tuple[Tensor, ...] | None = None
    memory: DynamiteTransformerMemory | None = None
    padded_size: tuple[int, int] | None = None

    def nbytes(self) -> int:
        """Bytes held by these features (each tensor storage counted once): what caching one image costs."""
        tensors = [self.mask_features, *(self.multi_scale_features or ())]
        if self.memory is not None:
            memory = self.memory
            tensors += [*memory.encoder_keys, *memory.encoder_values, *(memory.level_mask_features or ())]
            tensors += [memory.decoder_pixel_position, memory.decoder_first_inputs]
        storages = {}
        for tensor in tensors:
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


@dataclass
class DynamiteModelOutput(ModelOutput):
    """Output of `DynamiteModel.forward`.

    Attributes:
        pred_masks (`torch.FloatTensor` of shape `(batch_size, num_queries, height / 4, width / 4)`):
            Per-query mask logits. Query order: instance 0's clicks, instance 1's, ..., background clicks,
            batch padding slots, then the static background queries.
        instance_logits (`list[torch.FloatTensor]`):
            Per image, `(num_instances, out_height, out_width)`: each instance's logit map (max over its click
            queries) at the output size (see `forward`'s `output_sizes`).
        label_maps (`list[torch.LongTensor]`):
            Per image, `(out_height, out_width)`: 0 for background, `k + 1` for instance `k` (argmax of the
            instances against every background query).
        aux_pred_masks (`tuple[torch.FloatTensor]`, *optional*):
            The earlier predictions (initial queries, then each encoder layer), shaped as `pred_masks`.
        num_clicks_per_instance (`list[list[int]]`):
            Per image, the clicks of each instance (how to split the query axis).
        image_features (`DynamiteImageFeatures`):
            The per-image features used, to pass back for the next click.
    """

    pred_masks: Tensor | None = None
    instance_logits: list[Tensor] | None = None
    label_maps: list[Tensor] | None = None
    aux_pred_masks: tuple[Tensor, ...] | None = None
    num_clicks_per_instance: list[list[int]] | None = None
    image_features: DynamiteImageFeatures | None = None


def group_query_logits(query_logits: Tensor, num_clicks_per_instance: Sequence[int]) -> tuple[Tensor, Tensor | None]:
    """Split `(num_queries, ...)` logits by instance: each instance's max over its click queries
    `(num_instances, ...)`, and the max over every remaining query (background clicks, batch padding, static
    background queries), or None when there is none. Inference and the training loss both group this way."""
    groups = query_logits.split([*num_clicks_per_instance, query_logits.shape[0] - sum(num_clicks_per_instance)])
    background = groups[-1].amax(0) if groups[-1].shape[0] > 0 else None
    return torch.stack([group.amax(0) for group in groups[:-1]]), background


def fuse_instances(query_logits: Tensor, num_clicks_per_instance: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Instance logits and label map from per-query logits (spec section 1.5, steps 3-4).

    Args:
        query_logits: `(num_queries, height, width)`, in query order.
        num_clicks_per_instance: clicks of each instance; every remaining query is background.

    Returns:
        `instance_logits` `(num_instances, height, width)` (max over each instance's queries) and the label map
        `(height, width)` int64: 0 for background, `k + 1` for instance `k`. Ties go to the lower instance, and
        an instance beats background on a tie, as `torch.argmax` over `[instances..., background queries...]`.
    """
    instance_logits, background_logits = group_query_logits(query_logits, num_clicks_per_instance)
    return instance_logits, label_instances(instance_logits, background_logits)


def label_instances(
    instance_scores: Tensor, background_score: Tensor | None = None, dtype: torch.dtype = torch.long
) -> Tensor:
    """The label map `(height, width)` (`dtype`, int64 by default) of per-instance scores `(num_instances, height,
    width)` and the background's `(height, width)` (or None): 0 where the background is strictly highest, else
    `k + 1` for the highest instance `k`, the lower instance on ties (`fuse_instances`' rule)."""
    # argmax over [instances..., background] as a running comparison (a reduction over a short leading axis
    # is slow in torch); updating only on a strictly greater value keeps the first index on ties.
    best_value = instance_scores[0].clone()
    label_map = torch.ones(best_value.shape, dtype=dtype, device=best_value.device)
    for index in range(1, instance_scores.shape[0]):
        better = instance_scores[index] > best_value
        torch.maximum(best_value, instance_scores[index], out=best_value)
        label_map.masked_fill_(better, index + 1)
    if background_score is not None:
        label_map.masked_fill_(background_score > best_value, 0)
    return label_map


class DynamitePreTrainedModel(PreTrainedModel):
    config_class = DynamiteConfig
    base_model_prefix = "dynamite"
    main_input_name = "pixel_values"
    _no_split_modules = ["DynamiteEncoderLayer", "DynamiteDecoderLayer", "DynamiteDeformableEncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        # Modules initialise themselves as the original does; nothing to add when transformers asks.
        return


class DynamiteModel(DynamitePreTrainedModel):
    """DynaMITe: several instances segmented at once from clicks.

    The expensive stage (`get_image_features`: backbone + pixel decoder + the click-independent projections)
    runs once per image; `forward` with `image_features` then runs only the interactive transformer.
    Inputs are normalised, zero-padded pixel values (see `DynamiteImageProcessor`); clicks are `Click`s in the
    model frame (pixels of the resized image before padding).
    """

    def __init__(self, config: DynamiteConfig) -> None:
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.pixel_decoder = DynamitePixelDecoder(config, tuple(self.backbone.out_channels))
        self.interactive_transformer = DynamiteInteractiveTransformer(config)
        self.post_init()
        # from_pretrained builds on the meta device and then loads every weight from the file instead.
        if config.use_imagenet_backbone and not next(self.backbone.parameters()).is_meta:
            self.load_imagenet_backbone()

    def load_imagenet_backbone(self, path: str | None = None) -> None:
        """Load ImageNet weights into the backbone (only families that ship them offline)."""
        family = _backbone_family(self.config.backbone_type)
        if not hasattr(family, "load_imagenet_weights"):
            raise ValueError(
                f"backbone_type {self.config.backbone_type!r} has no installable ImageNet weights; "
                "use_imagenet_backbone needs 'mobilenet_v2'"
            )
        family.load_imagenet_weights(self.backbone, path)

    def _check_pixel_values(self, pixel_values: Tensor) -> None:
        if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor, got {shape}")
        divisor = self.config.size_divisibility
        if pixel_values.shape[-2] % divisor or pixel_values.shape[-1] % divisor:
            raise ValueError(
                f"pixel_values height and width must be multiples of {divisor} (pad them, e.g. with "
                f"DynamiteImageProcessor), got {tuple(pixel_values.shape[-2:])}"
            )

    def save_pretrained(self, *args, **kwargs):
        parts = getattr(self, "int8_parts", ())
        if parts:
            raise ValueError(
                f"this model has int8 layers (quantize_int8, parts {parts!r}) and cannot be saved: save the float32 "
                "model and quantize after loading"
            )
        return super().save_pretrained(*args, **kwargs)

    def get_image_features(self, pixel_values: Tensor) -> DynamiteImageFeatures:
        """Run the per-image stage: backbone, pixel decoder and the click-independent projections.

        Args:
            pixel_values: `(batch, 3, height, width)` normalised, zero-padded to multiples of
                `config.size_divisibility`.
        """
        self._check_pixel_values(pixel_values)
        backbone_features = self.backbone(pixel_values)
        if torch.is_autocast_enabled(pixel_values.device.type):
            # Mixed-precision training keeps the deformable-attention pixel decoder in float32, as the original.
            with torch.autocast(pixel_values.device.type, enabled=False):
                mask_features, multi_scale_features = self.pixel_decoder([f.float() for f in backbone_features])
        else:
            mask_features, multi_scale_features = self.pixel_decoder(backbone_features)
        memory = self.interactive_transformer.prepare_memory(multi_scale_features, mask_features)
        return DynamiteImageFeatures(
            mask_features=mask_features,
            multi_scale_features=tuple(multi_scale_features),
            memory=memory,
            padded_size=(pixel_values.shape[-2], pixel_values.shape[-1]),
        )

    def forward(
        self,
        pixel_values: Tensor | None = None,
        clicks: Sequence[Sequence[Click]] | None = None,
        image_features: DynamiteImageFeatures | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        max_timestamp: Sequence[int] | None = None,
        output_auxiliary: bool = False,
        return_dict: bool | None = None,
    ) -> DynamiteModelOutput:
        """Segment the clicked instances.

        Args:
            pixel_values: `(batch, 3, height, width)`, as for `get_image_features`; give this or `image_features`.
            clicks: per image, the `Click`s made so far in the model frame (`frame="model"`), in any order;
                instances numbered 0..N-1, each with at least one click.
            image_features: the output of `get_image_features` (or of an earlier `forward`) for these images.
            image_sizes: per image, `(height, width)` of the resized image inside the padded input (default: the
                padded size). Clicks must lie inside it; the padding is cropped before the output resize.
            output_sizes: per image, the size of `instance_logits` / `label_maps` (default: `image_sizes`);
                typically the original image size.
            max_timestamp: per image, the timestamp normaliser before the `temporal_norm` floor (default: the
                latest click's timestamp; either way it is 500 for fewer than 500 clicks).
            output_auxiliary: also return the intermediate predictions (used by training).
        """
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Give exactly one of pixel_values (first click) or image_features (cached features)")
        if image_features is None:
            image_features = self.get_image_features(pixel_values)
        if clicks is None or isinstance(clicks, Click) or any(isinstance(c, Click) for c in clicks):
            raise ValueError("clicks must be a list (one entry per image) of lists of Click")
        batch = image_features.mask_features.shape[0]
        if len(clicks) != batch:
            raise ValueError(f"clicks has {len(clicks)} entries but the batch holds {batch} images")
        padded_size = image_features.padded_size
        image_sizes = list(image_sizes) if image_sizes is not None else [padded_size] * batch
        output_sizes = list(output_sizes) if output_sizes is not None else image_sizes
        if len(image_sizes) != batch or len(output_sizes) != batch:
            raise ValueError(f"image_sizes and output_sizes must have one (height, width) per image ({batch})")

        pred_masks, auxiliary, counts = self.query_logits(
            image_features, clicks, image_sizes, max_timestamp, output_auxiliary
        )
        instance_logits, label_maps = [], []
        for index in range(batch):
            grouped = self.grouped_output_logits(
                pred_masks[index], counts[index], padded_size, image_sizes[index], output_sizes[index]
            )
            num_instances = len(counts[index])
            background = grouped[num_instances] if grouped.shape[0] > num_instances else None
            instance_logits.append(grouped[:num_instances])
            label_maps.append(label_instances(grouped[:num_instances], background))
        return DynamiteModelOutput(
            pred_masks=pred_masks,
            instance_logits=instance_logits,
            label_maps=label_maps,
            aux_pred_masks=tuple(auxiliary) if output_auxiliary else None,
            num_clicks_per_instance=counts,
            image_features=image_features,
        )

    def query_logits(
        self,
        image_features: DynamiteImageFeatures,
        clicks: Sequence[Sequence[Click]],
        image_sizes: Sequence[tuple[int, int]],
        max_timestamp: Sequence[int] | None = None,
        output_auxiliary: bool = False,
    ) -> tuple[Tensor, list[Tensor], list[list[int]]]:
        """The interactive transformer on checked, ordered clicks: per-query logits `(batch, queries, H/4, W/4)`,
        the auxiliary predictions (if asked) and each image's clicks per instance. Training calls this directly
        (no resizing to the output size); `forward` adds the instance fusion."""
        padded_size = image_features.padded_size
        ordered, counts = [], []
        for index, image_clicks in enumerate(clicks):
            name = f"clicks[{index}]"
            foreign = [c.frame for c in image_clicks if c.frame != "model"]
            if foreign:
                raise ValueError(
                    f"{name} holds clicks in the {foreign[0]!r} frame; the model takes frame='model' clicks "
                    "(map them with DynamiteImageProcessor.clicks_to_model_frame)"
                )
            height, width = image_sizes[index]
            if height > padded_size[0] or width > padded_size[1]:
                raise ValueError(f"image_sizes[{index}]={image_sizes[index]} exceeds the padded size {padded_size}")
            check_clicks_inside(image_clicks, height, width, name)
            image_ordered, image_counts = order_clicks(image_clicks, name)
            ordered.append(image_ordered)
            counts.append(image_counts)

        queries = DynamiteQueryBatch.from_clicks(
            ordered,
            counts,
            padded_size,
            self.config.temporal_norm,
            max_timestamp,
            image_features.mask_features.device,
        )
        pred_masks, auxiliary = self.interactive_transformer(
            image_features.multi_scale_features,
            image_features.mask_features,
            image_features.memory,
            queries,
            output_auxiliary=output_auxiliary,
        )
        return pred_masks, auxiliary, counts

    @staticmethod
    def grouped_output_logits(
        query_logits: Tensor,
        num_clicks_per_instance: Sequence[int],
        padded_size: tuple[int, int],
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> Tensor:
        """Stride-4 logits `(num_queries, h, w)` -> each instance's logits at `output_size`, then the background's
        if any query is background: `(num_instances [+ 1], *output_size)`. The same values as
        `group_query_logits(post_process_logits(...))`, bit for bit, resized one query at a time and folded into
        a running max: only one query's full-size logits exist at once, instead of every query's (78 MB for 20
        queries at 800 x 1216, faulted in fresh each click)."""
        counts = list(num_clicks_per_instance)
        num_background = query_logits.shape[0] - sum(counts)
        groups = counts + ([num_background] if num_background > 0 else [])
        output = query_logits.new_empty(len(groups), *output_size)
        start = 0
        for index, size in enumerate(groups):
            for query in range(start, start + size):
                resized = DynamiteModel.post_process_logits(
                    query_logits[query : query + 1], padded_size, image_size, output_size
                )[0]
                if query == start:
                    output[index].copy_(resized)
                else:
                    torch.maximum(output[index], resized, out=output[index])
            start += size
        return output

    @staticmethod
    def post_process_logits(
        query_logits: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int]
    ) -> Tensor:
        """Stride-4 logits `(num_queries, h, w)` -> `(num_queries, *output_size)`: upsample to the padded size,
        crop the padding, resize to the output size (bilinear, `align_corners=False`), as the original."""
        logits = F.interpolate(query_logits[None], size=padded_size, mode="bilinear", align_corners=False)
        logits = logits[:, :, : image_size[0], : image_size[1]]
        if tuple(output_size) != tuple(image_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits[0]

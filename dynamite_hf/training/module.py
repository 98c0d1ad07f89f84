"""The model as training runs it (spec section 2.2): image features once, a random number of corrective-click
passes through the interactive transformer only, then the supervised pass. One `nn.Module.forward`, so
DistributedDataParallel (through Accelerate) sees the whole step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clicks import Click, clicks_to_inputs
from ..models.dynamite.image_processing_dynamite import fuse_queries, label_instances
from ..models.dynamite.modeling_dynamite import DynamiteModel
from .click_simulation import corrective_clicks


@dataclass
class DynamiteTrainingOutput:
    """`pred_masks` `(batch, queries, S/4, S/4)`, the supervised auxiliary predictions, each query's instance
    (`query_labels` `(batch, queries)`: k >= 1 instance k, 0 background) and the final clicks (initial +
    corrective)."""

    pred_masks: Tensor
    aux_pred_masks: list[Tensor]
    query_labels: Tensor
    clicks: list[list[Click]]


class DynamiteForInteractiveTraining(nn.Module):
    """Wraps a `DynamiteModel` for training.

    Args:
        model: the model to train.
        corrective_clicks_first_image_only: reproduce the original's quirk (corrective clicks only for the first
            image of each per-device batch); the default adds them for every image, as the paper describes.
        freeze_backbone_batch_norm: keep BatchNorm statistics of the backbone fixed (their affine parameters
            still train), as detectron2's frozen BN does for the released backbones; small per-device batches
            would otherwise ruin the ImageNet statistics.
    """

    def __init__(
        self,
        model: DynamiteModel,
        corrective_clicks_first_image_only: bool = False,
        freeze_backbone_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.corrective_clicks_first_image_only = corrective_clicks_first_image_only
        self.freeze_backbone_batch_norm = freeze_backbone_batch_norm

    def train(self, mode: bool = True) -> DynamiteForInteractiveTraining:
        super().train(mode)
        if mode and self.freeze_backbone_batch_norm:
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def predicted_maps(
        self, pred_masks: Tensor, query_labels: Tensor, padding_masks: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Label maps at the crop size, 0 background and k + 1 instance k (the training variant of spec 1.5:
        logits zeroed on the padding)."""
        logits = F.interpolate(pred_masks.float(), scale_factor=4, mode="bilinear", align_corners=False)
        maps = []
        for index, labels in enumerate(query_labels):
            keep = torch.from_numpy(~padding_masks[index]).to(logits.device, logits.dtype)
            instances, background = fuse_queries(logits[index] * keep, labels, int(labels.max()))
            maps.append(label_instances(instances, background).cpu().numpy())
        return maps

    def forward(
        self,
        pixel_values: Tensor,
        instance_maps: list[np.ndarray],
        padding_masks: list[np.ndarray],
        clicks: list[list[Click]],
        num_iterations: int,
        rng: np.random.Generator,
        supervised_aux: int | None = None,
    ) -> DynamiteTrainingOutput:
        """Run the step's passes.

        Args:
            pixel_values: `(batch, 3, S, S)` normalised crops.
            instance_maps / padding_masks: per image `(S, S)` numpy ground truth.
            clicks: per image the initial clicks (`frame="model"`).
            num_iterations: corrective-click passes before the supervised one.
            rng: draws the corrective clicks.
            supervised_aux: how many auxiliary predictions to return (from the first); default all.
        """
        embeddings = self.model.get_image_embeddings(pixel_values)
        clicks = [list(c) for c in clicks]
        for _ in range(num_iterations):
            with torch.no_grad():
                outputs = self.model(image_embeddings=embeddings, **clicks_to_inputs(clicks))
                maps = self.predicted_maps(outputs.pred_masks, outputs.query_labels, padding_masks)
            targets = range(1) if self.corrective_clicks_first_image_only else range(len(clicks))
            for index in targets:
                next_timestamp = max(c.timestamp for c in clicks[index]) + 1
                clicks[index] += corrective_clicks(
                    instance_maps[index], padding_masks[index], maps[index], next_timestamp, rng
                )
        outputs = self.model(image_embeddings=embeddings, output_auxiliary_logits=True, **clicks_to_inputs(clicks))
        auxiliary = list(outputs.auxiliary_logits)
        if supervised_aux is not None:
            auxiliary = auxiliary[:supervised_aux]
        return DynamiteTrainingOutput(outputs.pred_masks, auxiliary, outputs.query_labels, clicks)


def supervised_aux_count(model: DynamiteModel) -> int:
    """How many auxiliary predictions the original supervises: its loss weights cover `ENC_LAYERS - 1` of them,
    the encoder-layer count, so with the decoder the last encoder layer's prediction is left out."""
    return model.config.encoder_layers


def parameter_groups(
    model: DynamiteModel, learning_rate: float, weight_decay: float, backbone_multiplier: float
) -> list[dict]:
    """AdamW groups of spec 2.4: backbone LR x `backbone_multiplier`; no weight decay for normalisation
    layers, embeddings and Swin's position tables; parameters registered directly (query embeddings, the
    pixel decoder's level embedding) keep it; frozen parameters are left out."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.Embedding)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            full_name = f"{module_name}.{name}" if module_name else name
            lr = learning_rate * (backbone_multiplier if full_name.startswith("backbone.") else 1.0)
            no_decay = isinstance(module, norms) or any(
                key in name for key in ("relative_position_bias_table", "absolute_pos_embed")
            )
            groups.setdefault((lr, 0.0 if no_decay else weight_decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def multistep_schedule(
    step: int, milestones: list[int], gamma: float, warmup_steps: int, warmup_factor: float
) -> float:
    """detectron2's `WarmupMultiStepLR` factor: linear warm-up from `warmup_factor`, then x `gamma` per passed
    milestone."""
    warmup = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        warmup = warmup_factor * (1 - alpha) + alpha
    return warmup * gamma ** sum(step >= m for m in milestones)

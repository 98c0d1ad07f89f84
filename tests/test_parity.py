"""Numerical parity of the whole model with the original implementation (../shared/reference).

Every released configuration is built from its preset, loaded through the converter from the recipe weights
under the original key names, and run on the reference inputs. Tolerances (fp32) are those the reference
README suggests, about ten times the original's own run-to-run variation when only the thread count changes:
rtol=1e-4, atol=1e-4 on the pixel-decoder features and rtol=1e-4, atol=5e-4 on the per-query logits (largest
|logit| 27.9). Binary masks must match exactly outside the near-tie pixels the reference lists.
"""

from __future__ import annotations

import functools

import pytest
import torch
from reference import CONFIGS, inputs, near_ties, original_state_dict, outputs, reference_clicks, requires_reference

from dynamite_hf import DynamiteConfig, DynamiteImageFeatures, DynamiteModel
from dynamite_hf.conversion import load_original_state_dict

FEATURE_TOL = {"rtol": 1e-4, "atol": 1e-4}
LOGIT_TOL = {"rtol": 1e-4, "atol": 5e-4}
SLOW = {"swin_large", "hrnet_w32"}

pytestmark = requires_reference


@functools.cache
def reference_model(preset: str) -> DynamiteModel:
    torch.set_num_threads(2)
    model = DynamiteModel(DynamiteConfig.from_preset(preset)).eval()
    load_original_state_dict(model, original_state_dict(CONFIGS[preset]))
    return model


@functools.cache
def image_features(preset: str, image: str) -> DynamiteImageFeatures:
    with torch.inference_mode():
        return reference_model(preset).get_image_features(inputs()[f"{image}.normalized_padded"])


def presets():
    return [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in CONFIGS]


def assert_matches_reference(actual: torch.Tensor, stored: dict[str, torch.Tensor], name: str, **tolerance) -> None:
    """Compare with a tensor stored in full or as a probe (shape + values at fixed flat indices)."""
    if name in stored:
        torch.testing.assert_close(actual, stored[name], **tolerance, msg=lambda m: f"{name}: {m}")
        return
    assert list(actual.shape) == stored[f"{name}.shape"].tolist()
    picked = actual.flatten()[stored[f"{name}.probe_idx"]]
    torch.testing.assert_close(picked, stored[f"{name}.probe_val"], **tolerance, msg=lambda m: f"{name}: {m}")


def assert_masks_match(label_map: torch.Tensor, preset: str, image: str, scenario: str) -> None:
    expected = outputs(CONFIGS[preset])[f"{image}.{scenario}.masks"].bool()
    masks = torch.stack([label_map == k + 1 for k in range(expected.shape[0])])
    assert masks.shape == expected.shape
    differing = (masks != expected).any(0)
    ties = near_ties(CONFIGS[preset], image, scenario, expected.shape[-1])
    differing[ties[:, 0], ties[:, 1]] = False
    assert not differing.any(), f"{int(differing.sum())} mask pixels differ outside the near ties"


@pytest.mark.parametrize("image", ["img0", "img1"])
@pytest.mark.parametrize("preset", presets())
def test_pixel_decoder_features(preset: str, image: str) -> None:
    stored = outputs(CONFIGS[preset])
    features = image_features(preset, image)
    assert_matches_reference(features.mask_features, stored, f"{image}.mask_features", **FEATURE_TOL)
    for level, feature in enumerate(features.multi_scale_features):
        assert_matches_reference(feature, stored, f"{image}.multi_scale_features.{level}", **FEATURE_TOL)


@pytest.mark.parametrize("image", ["img0", "img1"])
@pytest.mark.parametrize("preset", presets())
def test_first_click_then_cached_click(preset: str, image: str) -> None:
    model, stored = reference_model(preset), outputs(CONFIGS[preset])
    pixel_values = inputs()[f"{image}.normalized_padded"]
    image_size = tuple(inputs()[f"{image}.image_size"].tolist())
    with torch.inference_mode():
        # A: the first interaction runs the whole model.
        first = model(pixel_values=pixel_values, clicks=[reference_clicks(image, "A")], image_sizes=[image_size])
        # B: two more clicks on the cached features of A.
        later = model(
            image_features=first.image_features, clicks=[reference_clicks(image, "B")], image_sizes=[image_size]
        )
    for scenario, output in (("A", first), ("B", later)):
        assert_matches_reference(output.pred_masks, stored, f"{image}.{scenario}.pred_masks", **LOGIT_TOL)
        assert_masks_match(output.label_maps[0], preset, image, scenario)


@pytest.mark.parametrize("preset", ["resnet50", "swin_tiny"])
def test_negated_mask_features_unblock_full_rows(preset: str) -> None:
    """Scenario C: negated mask features make whole attention rows blocked, which the model must un-block."""
    model, stored = reference_model(preset), outputs(CONFIGS[preset])
    features = image_features(preset, "img0")
    negated = -features.mask_features
    with torch.inference_mode():
        memory = model.interactive_transformer.prepare_memory(features.multi_scale_features, negated)
        cached = DynamiteImageFeatures(
            mask_features=negated,
            multi_scale_features=features.multi_scale_features,
            memory=memory,
            padded_size=features.padded_size,
        )
        image_size = tuple(inputs()["img0.image_size"].tolist())
        output = model(image_features=cached, clicks=[reference_clicks("img0", "C")], image_sizes=[image_size])
    assert_matches_reference(output.pred_masks, stored, "img0.C.pred_masks", **LOGIT_TOL)
    assert_masks_match(output.label_maps[0], preset, "img0", "C")


def test_auxiliary_predictions() -> None:
    """The 10 intermediate predictions (initial queries, then each encoder layer) of the R50 model."""
    model = reference_model("resnet50")
    with torch.inference_mode():
        output = model(
            image_features=image_features("resnet50", "img0"),
            clicks=[reference_clicks("img0", "A")],
            output_auxiliary=True,
        )
    expected = outputs(CONFIGS["resnet50"])["img0.A.aux_pred_masks"]
    assert len(output.aux_pred_masks) == expected.shape[0] == 10
    # Ten times the original's thread-count variation on these (8e-5, largest |logit| 55.8).
    torch.testing.assert_close(torch.stack(output.aux_pred_masks), expected, rtol=1e-4, atol=8e-4)

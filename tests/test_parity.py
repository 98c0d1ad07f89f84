"""Numerical parity of the whole model with the original implementation (../shared/reference), on every backend.

Every released configuration is built from its preset, loaded through the converter from the recipe weights under
the original key names, and run on the reference inputs by each backend (`dynamite_hf.inference`): the plain model
("eager", with either attention implementation) and the CPU click decoder ("cpu"); the ONNX backend's parity runs
with the slow tests (`tests/test_onnx.py`). Tolerances (fp32) are those the reference README suggests, about ten
times the original's own run-to-run variation when only the thread count changes: rtol=1e-4, atol=1e-4 on the
pixel-decoder features and rtol=1e-4, atol=5e-4 on the per-query logits (largest |logit| 27.9). Binary masks must
match exactly outside the near-tie pixels the reference lists.
"""

from __future__ import annotations

import functools

import pytest
import torch
from reference import CONFIGS, inputs, near_ties, original_state_dict, outputs, reference_clicks, requires_reference

from dynamite_hf import DynamiteConfig, DynamiteImageEmbeddings, DynamiteImageProcessor, DynamiteModel
from dynamite_hf.clicks import clicks_to_inputs
from dynamite_hf.conversion import load_original_state_dict
from dynamite_hf.inference import select_backend

FEATURE_TOL = {"rtol": 1e-4, "atol": 1e-4}
LOGIT_TOL = {"rtol": 1e-4, "atol": 5e-4}
FAST = {"resnet50"}  # make test; the other four configurations run with RUN_SLOW=1
BACKENDS = ["eager", "sdpa", "cpu"]  # "eager" / "sdpa": the plain model with that attention implementation

pytestmark = requires_reference


@functools.cache
def reference_model(preset: str, attn_implementation: str = "sdpa") -> DynamiteModel:
    torch.set_num_threads(2)
    config = DynamiteConfig.from_preset(preset)
    config._attn_implementation = attn_implementation
    model = DynamiteModel(config).eval()
    load_original_state_dict(model, original_state_dict(CONFIGS[preset]))
    return model


def backend_of(preset: str, backend: str):
    if backend in ("eager", "sdpa"):
        return reference_model(preset, backend)
    return select_backend(reference_model(preset), backend)


@functools.cache
def image_embeddings(preset: str, backend: str, image: str) -> DynamiteImageEmbeddings:
    with torch.inference_mode():
        return backend_of(preset, backend).get_image_embeddings(inputs()[f"{image}.normalized_padded"])


def presets():
    return [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS]


def assert_matches_reference(actual: torch.Tensor, stored: dict[str, torch.Tensor], name: str, **tolerance) -> None:
    """Compare with a tensor stored in full or as a probe (shape + values at fixed flat indices)."""
    if name in stored:
        torch.testing.assert_close(actual, stored[name], **tolerance, msg=lambda m: f"{name}: {m}")
        return
    assert list(actual.shape) == stored[f"{name}.shape"].tolist()
    picked = actual.flatten()[stored[f"{name}.probe_idx"]]
    torch.testing.assert_close(picked, stored[f"{name}.probe_val"], **tolerance, msg=lambda m: f"{name}: {m}")


def assert_masks_match(pred_masks, query_labels, preset: str, image: str, scenario: str) -> None:
    """The masks `post_process_masks` makes (the image was fed unresized, so the sizes are its own)."""
    expected = outputs(CONFIGS[preset])[f"{image}.{scenario}.masks"].bool()
    size = [tuple(inputs()[f"{image}.image_size"].tolist())]
    masks = DynamiteImageProcessor().post_process_masks(pred_masks, query_labels, size, size)[0]["masks"]
    assert masks.shape == expected.shape
    differing = (masks != expected).any(0)
    ties = near_ties(CONFIGS[preset], image, scenario, expected.shape[-1])
    differing[ties[:, 0], ties[:, 1]] = False
    assert not differing.any(), f"{int(differing.sum())} mask pixels differ outside the near ties"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("image", ["img0", "img1"])
@pytest.mark.parametrize("preset", presets())
def test_pixel_decoder_features(preset: str, image: str, backend: str) -> None:
    stored = outputs(CONFIGS[preset])
    features = image_embeddings(preset, backend, image)
    assert_matches_reference(features.mask_features, stored, f"{image}.mask_features", **FEATURE_TOL)
    for level, feature in enumerate(features.multi_scale_features):
        assert_matches_reference(feature, stored, f"{image}.multi_scale_features.{level}", **FEATURE_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("image", ["img0", "img1"])
@pytest.mark.parametrize("preset", presets())
def test_first_click_then_cached_click(preset: str, image: str, backend: str) -> None:
    model, stored = backend_of(preset, backend), outputs(CONFIGS[preset])
    pixel_values = inputs()[f"{image}.normalized_padded"]
    with torch.inference_mode():
        # A: the first interaction runs the whole model.
        first = model(pixel_values=pixel_values, **clicks_to_inputs([reference_clicks(image, "A")]))
        # B: two more clicks on the cached features of A.
        later = model(image_embeddings=first.image_embeddings, **clicks_to_inputs([reference_clicks(image, "B")]))
    for scenario, output in (("A", first), ("B", later)):
        assert_matches_reference(output.pred_masks, stored, f"{image}.{scenario}.pred_masks", **LOGIT_TOL)
        assert_masks_match(output.pred_masks, output.query_labels, preset, image, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["resnet50", "swin_tiny"])
def test_negated_mask_features_unblock_full_rows(preset: str, backend: str) -> None:
    """Scenario C: negated mask features make whole attention rows blocked, which the model must un-block."""
    model, stored = backend_of(preset, backend), outputs(CONFIGS[preset])
    features = image_embeddings(preset, "sdpa", "img0")
    negated = DynamiteImageEmbeddings(-features.mask_features, features.multi_scale_features)
    with torch.inference_mode():
        output = model(image_embeddings=negated, **clicks_to_inputs([reference_clicks("img0", "C")]))
    assert_matches_reference(output.pred_masks, stored, "img0.C.pred_masks", **LOGIT_TOL)
    assert_masks_match(output.pred_masks, output.query_labels, preset, "img0", "C")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_auxiliary_predictions(attn_implementation: str) -> None:
    """The 10 intermediate predictions (initial queries, then each encoder layer) of the R50 model."""
    model = reference_model("resnet50", attn_implementation)
    with torch.inference_mode():
        output = model(
            image_embeddings=image_embeddings("resnet50", attn_implementation, "img0"),
            **clicks_to_inputs([reference_clicks("img0", "A")]),
            output_auxiliary_logits=True,
        )
    expected = outputs(CONFIGS["resnet50"])["img0.A.aux_pred_masks"]
    assert len(output.auxiliary_logits) == expected.shape[0] == 10
    # Ten times the original's thread-count variation on these (8e-5, largest |logit| 55.8).
    torch.testing.assert_close(torch.stack(output.auxiliary_logits), expected, rtol=1e-4, atol=8e-4)

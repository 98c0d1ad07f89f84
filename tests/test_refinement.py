"""The guided filter of `dynamite_hf.models.dynamite.refinement` and the predictor's boundary refinement: window means are exact,
the filter keeps sums, a boundary snaps to the photo's edge, and off means exactly the model's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_model

from dynamite_hf import Click, DynamiteImageProcessor, DynamitePredictor
from dynamite_hf.models.dynamite.refinement import GuidedFilter, box_mean, halve, image_to_guide


def test_box_mean_is_the_mean_over_the_window_inside_the_image() -> None:
    values = torch.rand(2, 9, 13, dtype=torch.float64)
    for radius in (1, 3, 20):
        expected = torch.empty_like(values)
        for row in range(9):
            for col in range(13):
                window = values[:, max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1]
                expected[:, row, col] = window.mean((1, 2))
        torch.testing.assert_close(box_mean(values, radius), expected, rtol=0, atol=1e-12)


def step_edge(height: int, width: int, edge_col: int) -> torch.Tensor:
    """A guide that is dark left of `edge_col` and bright from it on, with a little texture."""
    guide = torch.full((3, height, width), 0.2)
    guide[:, :, edge_col:] = 0.8
    return guide + 0.02 * torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))


def test_a_boundary_off_the_edge_snaps_to_the_edge() -> None:
    """The probability crosses 0.5 three pixels right of the photo's edge (as an upsampled stride-4 mask does);
    filtered with the photo as the guide it crosses at the edge. A plain mean of the same radius does not move it.
    (An offset of more than about half the radius is only partly corrected: 4 px with radius 6 ends 2 px off.)"""
    height, width, edge = 24, 48, 20
    ramp = torch.sigmoid((torch.arange(width, dtype=torch.float32) - 22.5) / 2.0)
    probabilities = ramp.expand(height, width)[None].clone()
    assert ((probabilities[0] > 0.5).nonzero()[:, 1].min()) == 23
    refined = GuidedFilter(step_edge(height, width, edge), radius=6, eps=1e-3)(probabilities)
    first_inside = (refined[0] > 0.5).int().argmax(1)
    assert (first_inside == edge).all(), first_inside
    smoothed = box_mean(probabilities, 6)
    assert ((smoothed[0] > 0.5).int().argmax(1) == 23).all()


def test_fitted_at_half_size_a_boundary_still_snaps_to_the_edge() -> None:
    """The app's preview fits the filter at half the working size with half the radius and applies it to the
    photo at the working size (`DynamitePredictor.preview_label_map`): the same off-edge boundary ends on the edge,
    or one pixel right of it when the edge falls between two half-size pixels."""
    height, width = 24, 48
    ramp = torch.sigmoid((torch.arange(width, dtype=torch.float32) - 22.5) / 2.0)
    probabilities = ramp.expand(height, width)[None].clone()
    for edge in (19, 20, 21):
        guide = step_edge(height, width, edge)
        refined = GuidedFilter(halve(guide), radius=3, eps=1e-3)(halve(probabilities), guide)
        assert refined.shape == (1, height, width)
        first_inside = (refined[0] > 0.5).int().argmax(1)
        assert ((first_inside == edge) | (first_inside == edge + 1)).all(), (edge, first_inside)


def test_filtering_keeps_sums_and_applies_at_a_larger_output_size() -> None:
    height, width, edge = 24, 48, 20
    logits = torch.randn(3, height, width, generator=torch.Generator().manual_seed(1))
    probabilities = logits.softmax(0)
    guide = step_edge(height, width, edge)
    gf = GuidedFilter(guide, radius=3, eps=1e-2)
    torch.testing.assert_close(gf(probabilities).sum(0), torch.ones(height, width), rtol=0, atol=1e-5)
    constant = torch.full((1, height, width), 0.3)
    torch.testing.assert_close(gf(constant), constant, rtol=0, atol=1e-5)
    large_guide = torch.nn.functional.interpolate(guide[None], size=(48, 96), mode="bilinear")[0]
    large = gf(probabilities, large_guide)
    assert large.shape == (3, 48, 96)
    torch.testing.assert_close(large.sum(0), torch.ones(48, 96), rtol=0, atol=1e-5)


def test_filtering_near_each_object_only_matches_the_whole_map() -> None:
    """A small object: filtered within its reach only (the default) or over the whole map (`negligible` below
    every probability), the results agree to the negligible probability, at the working and a larger size."""
    height, width = 40, 60
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    logits = 12.0 - 2.0 * ((rows - 12.0) ** 2 + (cols - 40.0) ** 2).float().sqrt()
    probabilities = torch.stack([logits, torch.zeros_like(logits)]).div(2.0).softmax(0)[:1]
    guide = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    windowed = GuidedFilter(guide, radius=3, eps=1e-3)
    whole = GuidedFilter(guide, radius=3, eps=1e-3)
    whole.negligible = -1.0
    assert windowed._support(probabilities[0]) != (slice(0, height), slice(0, width))
    large = torch.nn.functional.interpolate(guide[None], size=(100, 150), mode="bilinear")[0]
    for output_guide in (None, large):
        torch.testing.assert_close(
            windowed(probabilities, output_guide), whole(probabilities, output_guide), rtol=0, atol=2e-3
        )


def reference_guided_filter(guide, probabilities, radius, eps, output_guide):
    """The fast guided filter written plainly: window means by average pooling, a 3x3 solve per pixel, the
    coefficients upsampled by F.interpolate."""
    import torch.nn.functional as F

    def mean(x):
        return F.avg_pool2d(x[None], 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)[0]

    mean_i, mean_p = mean(guide), mean(probabilities)
    outer = guide[:, None] * guide[None, :]
    sigma = mean(outer.reshape(9, *guide.shape[1:])).view(3, 3, *guide.shape[1:])
    sigma = sigma - mean_i[:, None] * mean_i[None, :] + eps * torch.eye(3)[..., None, None]
    results = []
    for p, m in zip(probabilities, mean_p):
        covariance = mean(guide * p) - mean_i * m
        a = torch.linalg.solve(sigma.permute(2, 3, 0, 1), covariance.permute(1, 2, 0)[..., None])[..., 0]
        a = a.permute(2, 0, 1)
        b = m - (a * mean_i).sum(0)
        coefficients = mean(torch.cat([a, b[None]]))
        coefficients = F.interpolate(coefficients[None], size=output_guide.shape[1:], mode="bilinear")[0]
        results.append((coefficients[:3] * output_guide).sum(0) + coefficients[3])
    return torch.stack(results)


def test_the_filter_matches_a_plain_implementation() -> None:
    generator = torch.Generator().manual_seed(3)
    guide = torch.rand(3, 30, 44, generator=generator, dtype=torch.float64).float()
    probabilities = torch.randn(3, 30, 44, generator=generator).softmax(0)[:2]
    for size in ((30, 44), (75, 97)):
        output_guide = torch.nn.functional.interpolate(guide[None], size=size, mode="bilinear")[0]
        expected = reference_guided_filter(guide, probabilities, 4, 1e-2, output_guide)
        actual = GuidedFilter(guide, 4, 1e-2)(probabilities, None if size == (30, 44) else output_guide)
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_bad_filter_arguments_are_named() -> None:
    guide = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="radius must be a positive int, got 0"):
        GuidedFilter(guide, 0, 1e-3)
    with pytest.raises(ValueError, match="eps must be positive"):
        GuidedFilter(guide, 2, 0.0)
    with pytest.raises(ValueError, match=r"guide must be \(3, height, width\), got shape \(8, 8\)"):
        GuidedFilter(guide[0], 2, 1e-3)
    with pytest.raises(ValueError, match="probabilities are 4x8 but the guide is 8x8"):
        GuidedFilter(guide, 2, 1e-3)(torch.rand(1, 4, 8))


def test_image_to_guide_scales_and_resizes() -> None:
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[..., 1] = 255
    guide = image_to_guide(image, (5, 10))
    assert guide.shape == (3, 5, 10) and guide.dtype == torch.float32
    assert torch.allclose(guide[1], torch.ones(5, 10)) and torch.allclose(guide[0], torch.zeros(5, 10))


# -- the predictor ----------------------------------------------------------------------------------------------


def make_predictor(radius: int, refine: bool | None = None) -> DynamitePredictor:
    processor = DynamiteImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, guided_filter_radius=radius)
    return DynamitePredictor(tiny_model(), processor, refine_boundaries=refine)


def two_region_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (90, 120, 3), dtype=np.uint8)
    image[:, 61:] += 180
    return image


CLICKS = [Click(0, 30.0, 20.0, 0), Click(1, 60.0, 100.0, 1), Click(None, 85.0, 5.0, 2)]


def test_refinement_is_off_unless_the_processor_turns_it_on() -> None:
    """Radius 0 (the released models) or `refine_boundaries=False`: exactly the model's fused label map."""
    image = two_region_image()
    plain = make_predictor(0)
    assert not plain.refine_boundaries
    plain.set_image(image)
    model, processor = plain.model, plain.processor
    inputs = processor(
        image,
        input_points=[[[c.col, c.row] for c in CLICKS]],
        input_labels=[[0 if c.instance is None else c.instance + 1 for c in CLICKS]],
    )
    with torch.inference_mode():
        outputs = model(**inputs)
        expected = processor.post_process_masks(
            outputs.pred_masks, outputs.query_labels, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]["label_map"]
    np.testing.assert_array_equal(plain.label_map_of(CLICKS), expected.numpy())
    switched_off = make_predictor(4, refine=False)
    switched_off.model.load_state_dict(model.state_dict())
    switched_off.set_image(image)
    np.testing.assert_array_equal(switched_off.label_map_of(CLICKS), expected.numpy())


def test_refinement_follows_the_photo_edge_in_every_api() -> None:
    """With the filter on, the session's masks, `label_map_of` and the display-size preview all come from the
    refined probabilities: the label maps differ from the unrefined ones, the session's equal `label_map_of`, and
    the preview at half size is that map's downscaled counterpart except near boundaries."""
    image = two_region_image()
    refined = make_predictor(4)
    assert refined.refine_boundaries
    refined.set_image(image)
    unrefined = make_predictor(4, refine=False)
    unrefined.model.load_state_dict(refined.model.state_dict())
    unrefined.set_image(image)
    full = refined.label_map_of(CLICKS)
    assert full.shape == image.shape[:2] and set(np.unique(full)) <= {0, 1, 2}
    assert (full != unrefined.label_map_of(CLICKS)).any()
    refined.set_clicks(CLICKS)
    np.testing.assert_array_equal(refined.label_map, full)
    preview = refined.preview_label_map(CLICKS, (45, 60))
    assert (preview == full[1::2, 1::2]).mean() > 0.9
    assert refined.nbytes() > unrefined.nbytes()


def test_refine_boundaries_needs_a_radius() -> None:
    with pytest.raises(ValueError, match="refine_boundaries=True needs a positive guided_filter_radius"):
        make_predictor(0, refine=True)
    with pytest.raises(ValueError, match="refine_boundaries must be None, True or False, got 'yes'"):
        make_predictor(4, refine="yes")


def test_the_processor_rejects_bad_filter_settings() -> None:
    with pytest.raises(ValueError, match="guided_filter_radius must be an int >= 0"):
        DynamiteImageProcessor(guided_filter_radius=-1)
    with pytest.raises(ValueError, match="guided_filter_eps and guided_filter_temperature must be positive"):
        DynamiteImageProcessor(guided_filter_eps=0.0)

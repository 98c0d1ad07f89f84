"""The ONNX export and the onnxruntime backend: the same logits and label maps as PyTorch, on tiny random
configurations exported once per module (the export takes most of this file's time)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript (pip install -e '.[onnx]')")

from test_modeling import tiny_model  # noqa: E402

from dynamite_hf import Click, DynamiteImageProcessor, DynamitePredictor  # noqa: E402
from dynamite_hf.inference.onnx import (  # noqa: E402
    CLICK_DECODER_FILE,
    IMAGE_ENCODER_FILE,
    METADATA_FILE,
    OnnxDynamiteModel,
    export_onnx,
    features_to_tensors,
)

ATOL = 1e-4


def _export(preset: str, directory):
    model = tiny_model(preset)
    export_onnx(model, directory)
    return model, OnnxDynamiteModel.from_pretrained(directory, num_threads=1)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return _export("mobilenet_v2", tmp_path_factory.mktemp("onnx_mobilenet_v2"))


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    return _export("resnet50", tmp_path_factory.mktemp("onnx_resnet50"))


def _clicks(name: str, height: int, width: int) -> list[Click]:
    """Click configurations in the model frame; `many` has more queries than the few-keys decoder attention
    takes in PyTorch (so the two backends also compute the decoder attention differently)."""
    if name == "one":
        return [Click(0, height / 2, width / 3, 0, "model")]
    if name == "two_with_background":
        return [
            Click(0, 10.5, 20.5, 0, "model"),
            Click(None, height - 3.0, 2.0, 1, "model"),
            Click(1, height / 2, width - 10.25, 2, "model"),
            Click(0, 15.0, 30.0, 3, "model"),
            Click(None, 2.0, width - 2.0, 4, "model"),
        ]
    rng = np.random.default_rng(0)
    instances = [k % 4 if k % 5 else None for k in range(24)]
    instances[0] = 0  # ...every instance 0..3 has clicks
    return [
        Click(instance, float(rng.uniform(0, height - 1)), float(rng.uniform(0, width - 1)), t, "model")
        for t, instance in enumerate(instances)
    ]


def _compare_stages(models, size: tuple[int, int], clicks_name: str) -> None:
    torch_model, onnx_model = models
    pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[0] * size[1]))
    clicks = [_clicks(clicks_name, *size)]
    with torch.inference_mode():
        torch_features = torch_model.get_image_features(pixel_values)
        expected, _, counts = torch_model.query_logits(torch_features, clicks, [size])
    onnx_features = onnx_model.get_image_features(pixel_values)
    for name, got, want in zip(
        onnx_model.feature_names, features_to_tensors(onnx_features), features_to_tensors(torch_features)
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    logits, _, onnx_counts = onnx_model.query_logits(onnx_features, clicks, [size])
    assert onnx_counts == counts
    assert (
        logits.shape
        == expected.shape
        == (1, len(clicks[0]) + torch_model.config.num_static_bg_queries, *[s // 4 for s in size])
    )
    torch.testing.assert_close(logits, expected, rtol=0, atol=ATOL)


# One exported pair of graphs serves every image size and click count (dynamic axes).
@pytest.mark.parametrize(
    ("size", "clicks_name"),
    [((64, 96), "one"), ((64, 96), "two_with_background"), ((128, 64), "two_with_background"), ((96, 160), "many")],
)
def test_mobilenet_logits_match_pytorch(mobilenet, size, clicks_name) -> None:
    _compare_stages(mobilenet, size, clicks_name)


@pytest.mark.slow
@pytest.mark.parametrize(("size", "clicks_name"), [((64, 96), "two_with_background"), ((128, 96), "many")])
def test_resnet50_logits_match_pytorch(resnet50, size, clicks_name) -> None:
    _compare_stages(resnet50, size, clicks_name)


def _assert_same_label_maps_outside_near_ties(
    got: np.ndarray, want: np.ndarray, instance_logits: torch.Tensor, background: torch.Tensor | None
) -> None:
    """Label maps equal except where PyTorch's two best candidates are within a few ATOL of each other."""
    differ = got != want
    if not differ.any():
        return
    candidates = instance_logits if background is None else torch.cat([instance_logits, background[None]])
    top2 = candidates.topk(2, dim=0).values if candidates.shape[0] > 1 else None
    assert top2 is not None, "a single candidate cannot tie, yet the label maps differ"
    gap = (top2[0] - top2[1]).numpy()
    assert (gap[differ] < 10 * ATOL).all(), f"{differ.sum()} pixels differ, gaps {np.sort(gap[differ])[-5:]}"


@pytest.mark.parametrize("clicks_name", ["two_with_background", "many"])
def test_forward_label_maps_match_pytorch(mobilenet, clicks_name) -> None:
    torch_model, onnx_model = mobilenet
    size, output_size = (96, 160), (150, 250)
    pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    clicks = [_clicks(clicks_name, *size)]
    with torch.inference_mode():
        expected = torch_model(pixel_values=pixel_values, clicks=clicks, output_sizes=[output_size])
        logits = torch_model.post_process_logits(expected.pred_masks[0], size, size, output_size)
    got = onnx_model(pixel_values=pixel_values, clicks=clicks, output_sizes=[output_size])
    assert got.label_maps[0].shape == output_size
    assert got.num_clicks_per_instance == expected.num_clicks_per_instance
    torch.testing.assert_close(got.instance_logits[0], expected.instance_logits[0], rtol=0, atol=ATOL)
    from dynamite_hf.models.dynamite.modeling_dynamite import group_query_logits

    instance_logits, background = group_query_logits(logits, expected.num_clicks_per_instance[0])
    _assert_same_label_maps_outside_near_ties(
        got.label_maps[0].numpy(), expected.label_maps[0].numpy(), instance_logits, background
    )
    if clicks_name == "two_with_background":  # (with many background clicks, this random model labels none)
        assert len(np.unique(expected.label_maps[0].numpy())) > 1  # not a comparison of two blank maps


def test_predictor_runs_the_onnx_backend_with_the_same_api(mobilenet) -> None:
    torch_model, onnx_model = mobilenet
    processor = DynamiteImageProcessor.from_config(torch_model.config, short_edge=96, max_size=160)
    image = np.random.default_rng(3).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    sessions = [DynamitePredictor(model, processor) for model in (torch_model, onnx_model)]
    masks = []
    for predictor in sessions:
        predictor.set_image(image)
        predictor.add_click(30, 40)
        predictor.add_click(70, 120, instance=1)
        predictor.add_background_click(5, 5)
        predictor.add_click(35, 50, instance=0)
        predictor.undo()
        masks.append(predictor.masks)
    assert masks[0].shape == masks[1].shape == (2, 90, 140)
    # Near-tie pixels may flip; on a random image they are rare.
    assert (masks[0] != masks[1]).mean() < 1e-3
    assert masks[0].any()


def _copy_export(source, destination):
    shutil.copytree(source, destination)
    return destination


def test_missing_metadata_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=METADATA_FILE):
        OnnxDynamiteModel.from_pretrained(tmp_path)


def test_a_file_that_is_not_onnx_is_named(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    (directory / CLICK_DECODER_FILE).write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=rf"{CLICK_DECODER_FILE} is not a readable ONNX model.*click_decoder graph"):
        OnnxDynamiteModel.from_pretrained(directory)


def test_a_graph_from_another_export_is_refused(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    metadata = json.loads((directory / METADATA_FILE).read_text())
    metadata["export_id"] = "0" * 32  # as the metadata of another export run
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=rf"{IMAGE_ENCODER_FILE} comes from another export"):
        OnnxDynamiteModel.from_pretrained(directory)


def test_swapped_graphs_are_named(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    shutil.copy(_export_dir(mobilenet) / IMAGE_ENCODER_FILE, directory / CLICK_DECODER_FILE)
    with pytest.raises(
        ValueError, match=rf"{CLICK_DECODER_FILE} is the image_encoder graph of an export; expected the click_decoder"
    ):
        OnnxDynamiteModel.from_pretrained(directory)


def _write_onnx(path, input_names: list[str], metadata: dict[str, str]) -> None:
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in input_names]
    output = helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_names[0]], ["pred_masks"])], "foreign", inputs, [output]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def test_an_onnx_file_without_dynamite_metadata_is_named(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    _write_onnx(directory / CLICK_DECODER_FILE, ["pixel_values"], {})
    with pytest.raises(ValueError, match=rf"{CLICK_DECODER_FILE} carries no dynamite metadata"):
        OnnxDynamiteModel.from_pretrained(directory)


def test_missing_input_names_are_listed(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    export_id = json.loads((directory / METADATA_FILE).read_text())["export_id"]
    metadata = {"dynamite_role": "click_decoder", "dynamite_export_id": export_id}
    _write_onnx(directory / CLICK_DECODER_FILE, ["mask_features", "click_coords_yx"], metadata)
    with pytest.raises(
        ValueError, match=rf"{CLICK_DECODER_FILE} has inputs that do not match.*missing \['multi_scale_features.0'"
    ):
        OnnxDynamiteModel.from_pretrained(directory)


def _export_dir(models):
    return models[1].directory


def test_a_backbone_the_export_does_not_support_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="backbone_type 'swin'.*does not support"):
        export_onnx(tiny_model("swin_tiny"), tmp_path)
    assert not any(tmp_path.iterdir())

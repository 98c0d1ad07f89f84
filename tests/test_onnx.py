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

from reference import CONFIGS, inputs, original_state_dict, outputs, reference_clicks, requires_reference  # noqa: E402
from tiny import tiny_model  # noqa: E402

from dynamite_hf import Click, DynamiteConfig, DynamiteImageProcessor, DynamiteModel, DynamitePredictor  # noqa: E402
from dynamite_hf.clicks import clicks_to_inputs  # noqa: E402
from dynamite_hf.conversion import load_original_state_dict  # noqa: E402
from dynamite_hf.inference.onnx import (  # noqa: E402
    CLICK_DECODER_FILE,
    IMAGE_ENCODER_FILE,
    METADATA_FILE,
    OnnxDynamiteModel,
    export_onnx,
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
    """Click configurations in the model frame; `many` has more queries than heads x queries < dim (the CPU
    decoder's reassociated attention), so every attention form meets."""
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
    clicks = clicks_to_inputs([_clicks(clicks_name, *size)])
    with torch.inference_mode():
        torch_embeddings = torch_model.get_image_embeddings(pixel_values)
        expected = torch_model(image_embeddings=torch_embeddings, **clicks)
    onnx_embeddings = onnx_model.get_image_embeddings(pixel_values)
    for name, got, want in zip(
        onnx_model.feature_names,
        [onnx_embeddings.mask_features, *onnx_embeddings.multi_scale_features],
        [torch_embeddings.mask_features, *torch_embeddings.multi_scale_features],
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")
    got = onnx_model(image_embeddings=onnx_embeddings, **clicks)
    assert torch.equal(got.query_labels, expected.query_labels)
    assert got.pred_masks.shape == expected.pred_masks.shape
    torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=ATOL)


@pytest.mark.slow
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


@pytest.mark.slow
def test_predictor_runs_the_onnx_backend_with_the_same_api(mobilenet) -> None:
    torch_model, onnx_model = mobilenet
    processor = DynamiteImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    image = np.random.default_rng(3).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    sessions = [DynamitePredictor(torch_model, processor, backend="eager"), DynamitePredictor(onnx_model, processor)]
    assert sessions[1].backend is onnx_model
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
    with pytest.raises(ValueError, match="runs only the 'onnx' backend"):
        DynamitePredictor(onnx_model, processor, backend="cpu")


@pytest.mark.slow
@requires_reference
def test_the_onnx_backend_passes_the_reference(tmp_path) -> None:
    """The exported R50 reference model (recipe weights) against the original's outputs, at the reference's
    tolerances: first and cached clicks on both images."""
    model = DynamiteModel(DynamiteConfig.from_preset("resnet50")).eval()
    load_original_state_dict(model, original_state_dict(CONFIGS["resnet50"]))
    export_onnx(model, tmp_path)
    onnx_model = OnnxDynamiteModel.from_pretrained(tmp_path, num_threads=2)
    stored = outputs(CONFIGS["resnet50"])
    for image in ("img0", "img1"):
        embeddings = onnx_model.get_image_embeddings(inputs()[f"{image}.normalized_padded"])
        torch.testing.assert_close(embeddings.mask_features, stored[f"{image}.mask_features"], rtol=1e-4, atol=1e-4)
        for scenario in ("A", "B"):
            output = onnx_model(image_embeddings=embeddings, **clicks_to_inputs([reference_clicks(image, scenario)]))
            expected = stored[f"{image}.{scenario}.pred_masks"]
            torch.testing.assert_close(output.pred_masks, expected, rtol=1e-4, atol=5e-4)


def _copy_export(source, destination):
    shutil.copytree(source, destination)
    return destination


def test_missing_metadata_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=METADATA_FILE):
        OnnxDynamiteModel.from_pretrained(tmp_path)


@pytest.mark.slow
def test_a_file_that_is_not_onnx_is_named(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    (directory / CLICK_DECODER_FILE).write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=rf"{CLICK_DECODER_FILE} is not a readable ONNX model.*click_decoder graph"):
        OnnxDynamiteModel.from_pretrained(directory)


@pytest.mark.slow
def test_a_graph_from_another_export_is_refused(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    metadata = json.loads((directory / METADATA_FILE).read_text())
    metadata["export_id"] = "0" * 32  # as the metadata of another export run
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=rf"{IMAGE_ENCODER_FILE} comes from another export"):
        OnnxDynamiteModel.from_pretrained(directory)


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_onnx_file_without_dynamite_metadata_is_named(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    _write_onnx(directory / CLICK_DECODER_FILE, ["pixel_values"], {})
    with pytest.raises(ValueError, match=rf"{CLICK_DECODER_FILE} carries no dynamite metadata"):
        OnnxDynamiteModel.from_pretrained(directory)


@pytest.mark.slow
def test_missing_input_names_are_listed(mobilenet, tmp_path) -> None:
    directory = _copy_export(_export_dir(mobilenet), tmp_path / "export")
    export_id = json.loads((directory / METADATA_FILE).read_text())["export_id"]
    metadata = {"dynamite_role": "click_decoder", "dynamite_export_id": export_id}
    _write_onnx(directory / CLICK_DECODER_FILE, ["mask_features", "input_points"], metadata)
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

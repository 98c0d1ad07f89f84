"""DynaMITe's two stages as ONNX graphs, and a model that runs them with onnxruntime.

    export_onnx(DynamiteModel.from_pretrained(path), "onnx/")      # or: python scripts/export_onnx.py
    predictor = DynamitePredictor(OnnxDynamiteModel.from_pretrained("onnx/"))

`export_onnx` writes three files:

- `image_encoder.onnx`, the per-image stage (backbone and pixel decoder): `pixel_values` `(1, 3, H, W)` float32,
  `H` and `W` any multiples of 32, -> `mask_features` and `multi_scale_features.{0,1,2}`.
- `click_decoder.onnx`, the per-click stage (the interactive transformer and its mask head, the plain model's
  computation): those features plus the clicks in query order (`CLICK_INPUT_NAMES`, any number of clicks) ->
  `pred_masks` `(1, num_queries, H/4, W/4)`, the per-query logits.
- `dynamite_onnx.json`: the model's config and the names of the inputs and outputs, tying the two graphs to it.

Checking and ordering the clicks (`clicks_in_query_order`) stays outside the graphs, as does the post-processing
(`DynamiteImageProcessor.post_process_masks`): `OnnxDynamiteModel` offers the model's inference interface, so the
predictor and the app run it like the PyTorch model.

onnxruntime (and, for exporting, onnx and onnxscript) are optional dependencies: `pip install dynamite-hf[onnx]`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.dynamite.configuration_dynamite import DynamiteConfig
from ..models.dynamite.modeling_dynamite import (
    DynamiteImageEmbeddings,
    DynamiteModel,
    DynamiteModelOutput,
    clicks_in_query_order,
    order_clicks,
    query_labels_of,
)

IMAGE_ENCODER_FILE = "image_encoder.onnx"
CLICK_DECODER_FILE = "click_decoder.onnx"
METADATA_FILE = "dynamite_onnx.json"
FORMAT_NAME = "dynamite-onnx"
FORMAT_VERSION = 2
DEFAULT_OPSET = 20

# The clicks in query order (`order_clicks`), batch 1: `(1, num_clicks, 2)` float64 `(x, y)` in pixels of the
# padded input, `(1, num_clicks)` int64 labels (instance k >= 1, 0 background) and timestamps.
CLICK_INPUT_NAMES = ("input_points", "input_labels", "input_timestamps")
CLICK_OUTPUT_NAMES = ("pred_masks",)
IMAGE_INPUT_NAMES = ("pixel_values",)
_NUM_LEVELS = 3
# Backbones whose exported graph was found wrong, with the reason.
_UNSUPPORTED_BACKBONES = {
    "swin": "its graph is specialised to the example image's size (window padding and shifts depend on the size) "
    "and gives wrong features at other sizes",
}


def feature_names(config: DynamiteConfig | None = None) -> list[str]:
    """Names of the per-image feature tensors, in graph order (outputs of the image encoder, first inputs of the
    click decoder): `mask_features` `(1, dim, H/4, W/4)` and `multi_scale_features.{0,1,2}` `(1, dim, H/s, W/s)`
    for s = 32, 16, 8."""
    return ["mask_features", *(f"multi_scale_features.{level}" for level in range(_NUM_LEVELS))]


class DynamiteImageEncoderForExport(nn.Module):
    """The per-image stage with flat outputs: `pixel_values` -> the tensors of `feature_names`."""

    def __init__(self, model: DynamiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        embeddings = self.model.get_image_embeddings(pixel_values)
        return (embeddings.mask_features, *embeddings.multi_scale_features)


class DynamiteClickDecoderForExport(nn.Module):
    """The per-click stage with flat inputs: the feature tensors and the clicks in query order -> `pred_masks`."""

    def __init__(self, model: DynamiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: tuple[Tensor, ...], points: Tensor, labels: Tensor, timestamps: Tensor) -> Tensor:
        mask_features, multi_scale_features = features[0], features[1:]
        padded_size = (4 * mask_features.shape[-2], 4 * mask_features.shape[-1])
        pred_masks, _ = self.model.interactive_transformer(
            multi_scale_features, mask_features, points, labels, timestamps, padded_size
        )
        return pred_masks


def _feature_dynamic_shapes() -> tuple[dict[int, object], ...]:
    """torch.export dynamic axes of each feature tensor (sizes of the image and of the levels)."""
    from torch.export import Dim

    shapes = [{2: Dim("height_4"), 3: Dim("width_4")}]
    shapes += [{2: Dim(f"height_{s}"), 3: Dim(f"width_{s}")} for s in (32, 16, 8)]
    return tuple(shapes)


def export_onnx(
    model: DynamiteModel, output_dir: str | os.PathLike, opset: int = DEFAULT_OPSET, verbose: bool = False
) -> dict[str, Path]:
    """Export `model`'s per-image and per-click stages to `output_dir` (created if needed).

    Both graphs take any image size (multiples of 32) and any number of clicks; the batch is one image. The graphs
    compute attention as `model.config._attn_implementation` names it. Returns the paths written, keyed
    `"image_encoder"`, `"click_decoder"`, `"metadata"`. Needs the `onnx` extra (onnx, onnxscript); uses the
    torch.export-based exporter (`dynamo=True`).
    """
    from torch.export import Dim

    if not isinstance(model, DynamiteModel):
        raise TypeError(f"model must be a DynamiteModel, got {type(model).__name__}")
    config = model.config
    if config.backbone_type in _UNSUPPORTED_BACKBONES:
        raise ValueError(
            f"model has backbone_type {config.backbone_type!r}, which the ONNX export does not support yet: "
            f"{_UNSUPPORTED_BACKBONES[config.backbone_type]}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # An example image of 2 x 3 stride-32 cells and two clicks: sizes of 1 would be specialised by the export.
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    clicks = order_clicks(
        torch.tensor([[[20.0, 10.0], [70.0, 40.0]]], dtype=torch.float64), torch.tensor([[1, 0]]), None
    )
    names = feature_names(config)
    export_id = uuid.uuid4().hex
    paths = {
        "image_encoder": output_dir / IMAGE_ENCODER_FILE,
        "click_decoder": output_dir / CLICK_DECODER_FILE,
        "metadata": output_dir / METADATA_FILE,
    }

    def save(program, role: str) -> None:
        # Ties each graph to the metadata file (and so to the other graph of the same export).
        program.model.metadata_props.update({"dynamite_export_id": export_id, "dynamite_role": role})
        program.save(str(paths[role]))

    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixel_values)
        features = (embeddings.mask_features, *embeddings.multi_scale_features)
        encoder = torch.onnx.export(
            DynamiteImageEncoderForExport(model).eval(),
            (pixel_values,),
            dynamo=True,
            opset_version=opset,
            input_names=list(IMAGE_INPUT_NAMES),
            output_names=names,
            dynamic_shapes={"pixel_values": {2: 32 * Dim("height_32"), 3: 32 * Dim("width_32")}},
            verbose=verbose,
        )
        save(encoder, "image_encoder")
        num_clicks = Dim("num_clicks")
        decoder = torch.onnx.export(
            DynamiteClickDecoderForExport(model).eval(),
            (features, *clicks),
            dynamo=True,
            opset_version=opset,
            input_names=[*names, *CLICK_INPUT_NAMES],
            output_names=list(CLICK_OUTPUT_NAMES),
            dynamic_shapes=(_feature_dynamic_shapes(), {1: num_clicks}, {1: num_clicks}, {1: num_clicks}),
            verbose=verbose,
        )
        save(decoder, "click_decoder")

    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "export_id": export_id,
        "opset": opset,
        "torch_version": torch.__version__,
        "image_encoder": {
            "file": IMAGE_ENCODER_FILE,
            "inputs": list(IMAGE_INPUT_NAMES),
            "outputs": names,
        },
        "click_decoder": {
            "file": CLICK_DECODER_FILE,
            "inputs": [*names, *CLICK_INPUT_NAMES],
            "outputs": list(CLICK_OUTPUT_NAMES),
        },
        "config": config.to_dict(),
    }
    paths["metadata"].write_text(json.dumps(metadata, indent=2) + "\n")
    return paths


class OnnxDynamiteModel:
    """`DynamiteModel`'s inference interface (`get_image_embeddings`, and `forward` / calling it with
    `image_embeddings` and clicks) with both stages run by onnxruntime; `DynamitePredictor` takes it in place of a
    `DynamiteModel`.

    Build it with `OnnxDynamiteModel.from_pretrained(directory)` on a directory written by `export_onnx`. Tensors in
    and out are torch tensors on the CPU, as from the PyTorch model; batches hold one image.
    """

    _check_pixel_values = DynamiteModel._check_pixel_values

    def __init__(self, config: DynamiteConfig, image_encoder, click_decoder) -> None:
        self.config = config
        self.image_encoder = image_encoder
        self.click_decoder = click_decoder
        self.feature_names = feature_names(config)
        self.device = torch.device("cpu")
        self.directory: Path | None = None  # where from_pretrained read the graphs

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> OnnxDynamiteModel:
        """Load the graphs `export_onnx` wrote to `directory`.

        Args:
            directory: holds `dynamite_onnx.json`, `image_encoder.onnx` and `click_decoder.onnx`.
            providers: onnxruntime execution providers (default: `["CPUExecutionProvider"]`).
            num_threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).

        Raises `FileNotFoundError` for a missing file and `ValueError` naming the file for one that is not ONNX,
        not from the same export as the metadata, or without the inputs and outputs the metadata lists.
        """
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("OnnxDynamiteModel needs onnxruntime: pip install 'dynamite-hf[onnx]'") from error
        directory = Path(directory)
        metadata_path = directory / METADATA_FILE
        if not metadata_path.is_file():
            raise FileNotFoundError(
                f"{metadata_path} not found: directory must be an export of scripts/export_onnx.py, holding "
                f"{METADATA_FILE}, {IMAGE_ENCODER_FILE} and {CLICK_DECODER_FILE}"
            )
        try:
            metadata = json.loads(metadata_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{metadata_path} is not the JSON written by export_onnx: {error}") from error
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{metadata_path} is not a {FORMAT_NAME} metadata file (no 'format': '{FORMAT_NAME}')")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{metadata_path} has format_version {metadata.get('format_version')!r}; this version of "
                f"dynamite-hf reads version {FORMAT_VERSION} (export again with scripts/export_onnx.py)"
            )
        config = DynamiteConfig.from_dict(metadata["config"])
        options = onnxruntime.SessionOptions()
        # onnxruntime's workers otherwise spin after each run, taking the cores from the PyTorch resize and fusion
        # that follow a click (measured: a whole click up to 7x as long as its logits on 2 loaded cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        sessions = {}
        for role in ("image_encoder", "click_decoder"):
            path = directory / metadata[role]["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: the {role} graph listed in {metadata_path}")
            try:
                session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            except Exception as error:  # onnxruntime raises its own exception types for unreadable models
                raise ValueError(
                    f"{path} is not a readable ONNX model ({type(error).__name__}: {str(error).strip()[:300]}); "
                    f"expected the {role} graph written by scripts/export_onnx.py"
                ) from error
            _check_session(session, path, role, metadata, feature_names(config))
            sessions[role] = session
        model = cls(config, sessions["image_encoder"], sessions["click_decoder"])
        model.directory = directory
        return model

    def eval(self) -> OnnxDynamiteModel:
        """No-op (the graphs are inference graphs), for code written for a `DynamiteModel`."""
        return self

    def get_image_embeddings(self, pixel_values: Tensor) -> DynamiteImageEmbeddings:
        """Run the image-encoder graph: as `DynamiteModel.get_image_embeddings`, for a batch of one image."""
        self._check_pixel_values(pixel_values)
        if pixel_values.shape[0] != 1:
            raise ValueError(
                f"pixel_values must hold one image (batch 1) for the ONNX graphs, got {pixel_values.shape[0]}"
            )
        pixels = pixel_values.detach().to("cpu", torch.float32).numpy()
        outputs = [torch.from_numpy(o) for o in self.image_encoder.run(self.feature_names, {"pixel_values": pixels})]
        return DynamiteImageEmbeddings(mask_features=outputs[0], multi_scale_features=tuple(outputs[1:]))

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        input_timestamps: Tensor | None = None,
        image_embeddings: DynamiteImageEmbeddings | None = None,
        reshaped_input_sizes: Tensor | None = None,
        original_sizes: Tensor | None = None,
    ) -> DynamiteModelOutput:
        """As `DynamiteModel.forward` (the same arguments; batch 1), with the click graph run by onnxruntime."""
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Give exactly one of pixel_values (a new image) or image_embeddings (cached features)")
        if input_points is None or input_labels is None:
            raise ValueError("input_points and input_labels are required: at least one click on an instance")
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        points, labels, timestamps = clicks_in_query_order(
            image_embeddings, input_points, input_labels, input_timestamps, reshaped_input_sizes
        )
        tensors = [
            image_embeddings.mask_features,
            *image_embeddings.multi_scale_features,
            points.double(),
            labels.long(),
            timestamps.long(),
        ]
        feed = {
            name: t.detach().cpu().numpy() for name, t in zip(self.feature_names + list(CLICK_INPUT_NAMES), tensors)
        }
        (pred_masks,) = self.click_decoder.run(list(CLICK_OUTPUT_NAMES), feed)
        pred_masks = torch.from_numpy(pred_masks)
        return DynamiteModelOutput(
            pred_masks=pred_masks,
            query_labels=query_labels_of(labels, pred_masks.shape[1]),
            image_embeddings=image_embeddings,
        )

    __call__ = forward


def _check_session(session, path: Path, role: str, metadata: dict, names: list[str]) -> None:
    """Raise ValueError naming `path` unless the graph is the `role` graph of the export `metadata` describes."""
    custom = session.get_modelmeta().custom_metadata_map
    if custom.get("dynamite_role") is None:
        raise ValueError(
            f"{path} carries no dynamite metadata (dynamite_role, dynamite_export_id): expected the {role} graph "
            "written by scripts/export_onnx.py"
        )
    if custom["dynamite_role"] != role:
        raise ValueError(f"{path} is the {custom['dynamite_role']} graph of an export; expected the {role} graph")
    if custom.get("dynamite_export_id") != metadata.get("export_id"):
        raise ValueError(
            f"{path} comes from another export (id {custom.get('dynamite_export_id')}) than "
            f"{METADATA_FILE} (id {metadata.get('export_id')}); expected the files of one export_onnx run"
        )
    expected_inputs = list(IMAGE_INPUT_NAMES) if role == "image_encoder" else [*names, *CLICK_INPUT_NAMES]
    expected_outputs = names if role == "image_encoder" else list(CLICK_OUTPUT_NAMES)
    inputs = [node.name for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    for kind, expected, given in (("inputs", expected_inputs, inputs), ("outputs", expected_outputs, outputs)):
        if given != expected:
            missing = [name for name in expected if name not in given]
            extra = [name for name in given if name not in expected]
            raise ValueError(
                f"{path} has {kind} that do not match its config in {METADATA_FILE}: missing {missing}, "
                f"unexpected {extra} (expected {expected}, got {given})"
            )


__all__ = ["CLICK_INPUT_NAMES", "OnnxDynamiteModel", "export_onnx", "feature_names"]

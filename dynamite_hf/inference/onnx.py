"""DynaMITe's two stages as ONNX graphs, and a model that runs them with onnxruntime.

    export_onnx(DynamiteModel.from_pretrained(path), "onnx/")      # or: python scripts/export_onnx.py
    predictor = DynamitePredictor(OnnxDynamiteModel.from_pretrained("onnx/"))

`export_onnx` writes three files:

- `image_encoder.onnx`, the per-image stage (backbone, pixel decoder, the click-independent projections of the
  interactive transformer): `pixel_values` `(1, 3, H, W)` float32, `H` and `W` any multiples of
  `config.size_divisibility`, -> the feature tensors named by `feature_names(config)`.
- `click_decoder.onnx`, the per-click stage (the interactive transformer and its mask head): those feature
  tensors plus the click tensors (`CLICK_INPUT_NAMES`, any number of clicks) -> `pred_masks`
  `(1, num_queries, H/4, W/4)`, the per-query logits.
- `dynamite_onnx.json`: the model's config and the names of the inputs and outputs, tying the two graphs to it.

Turning clicks into the click tensors (`DynamiteQueryBatch.from_clicks`), the resize of the logits to the image
and the fusion into a label map stay outside the graphs: `OnnxDynamiteModel` borrows them from `DynamiteModel`,
so both backends share one definition of each and give the same label maps.

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
from ..models.dynamite.interactive_transformer import DynamiteQueryBatch, DynamiteTransformerMemory
from ..models.dynamite.modeling_dynamite import DynamiteImageFeatures, DynamiteModel

IMAGE_ENCODER_FILE = "image_encoder.onnx"
CLICK_DECODER_FILE = "click_decoder.onnx"
METADATA_FILE = "dynamite_onnx.json"
FORMAT_NAME = "dynamite-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 20

# The click tensors of `DynamiteQueryBatch` (batch 1): `(1, num_clicks, 2)` float32 row/col in the model frame,
# `(1, num_clicks, 3)` float32 (row / Hp, col / Wp, timestamp / max(latest, temporal_norm)), `(1, num_clicks)` bool.
CLICK_INPUT_NAMES = ("click_coords_yx", "click_normalized", "click_is_padding")
CLICK_OUTPUT_NAMES = ("pred_masks",)
IMAGE_INPUT_NAMES = ("pixel_values",)
_NUM_LEVELS = 3
# Backbones whose exported graph was found wrong, with the reason.
_UNSUPPORTED_BACKBONES = {
    "swin": "its graph is specialised to the example image's size (window padding and shifts depend on the size) "
    "and gives wrong features at other sizes",
}


def feature_names(config: DynamiteConfig) -> list[str]:
    """Names of the per-image feature tensors, in graph order (outputs of the image encoder, first inputs of the
    click decoder). Shapes for a padded `H x W` image, `dim = hidden_dim`, `heads = num_heads`:

    - `mask_features` `(1, dim, H/4, W/4)`;
    - `multi_scale_features.{0,1,2}` `(1, dim, H/s, W/s)` for s = 32, 16, 8;
    - `encoder_keys.{i}` / `encoder_values.{i}` `(heads, level_pixels, dim / heads)` per encoder layer i (the
      level i mod 3);
    - `decoder_pixel_position`, `decoder_first_inputs` `(1, H/4 * W/4, dim)` (only with decoder layers);
    - `level_mask_features.{0,1,2}` `(1, dim, H/s, W/s)`, the mask features resized to each level.
    """
    names = ["mask_features", *(f"multi_scale_features.{level}" for level in range(_NUM_LEVELS))]
    names += [f"encoder_keys.{index}" for index in range(config.encoder_layers)]
    names += [f"encoder_values.{index}" for index in range(config.encoder_layers)]
    if config.decoder_layers > 0:
        names += ["decoder_pixel_position", "decoder_first_inputs"]
    names += [f"level_mask_features.{level}" for level in range(_NUM_LEVELS)]
    return names


def features_to_tensors(features: DynamiteImageFeatures) -> list[Tensor]:
    """`DynamiteImageFeatures` -> the flat list of tensors named by `feature_names`."""
    memory = features.memory
    tensors = [features.mask_features, *features.multi_scale_features, *memory.encoder_keys, *memory.encoder_values]
    if memory.decoder_pixel_position is not None:
        tensors += [memory.decoder_pixel_position, memory.decoder_first_inputs]
    return tensors + list(memory.level_mask_features)


def tensors_to_features(
    tensors: Sequence[Tensor], config: DynamiteConfig, padded_size: tuple[int, int]
) -> DynamiteImageFeatures:
    """The inverse of `features_to_tensors`; `padded_size` `(height, width)` of the padded input."""
    layers = config.encoder_layers
    mask_features, multi_scale = tensors[0], tuple(tensors[1 : 1 + _NUM_LEVELS])
    start = 1 + _NUM_LEVELS
    keys, values = list(tensors[start : start + layers]), list(tensors[start + layers : start + 2 * layers])
    start += 2 * layers
    position = first_inputs = None
    if config.decoder_layers > 0:
        position, first_inputs = tensors[start], tensors[start + 1]
        start += 2
    memory = DynamiteTransformerMemory(
        encoder_keys=keys,
        encoder_values=values,
        level_sizes=[tuple(feature.shape[-2:]) for feature in multi_scale],
        decoder_pixel_position=position,
        decoder_first_inputs=first_inputs,
        level_mask_features=list(tensors[start : start + _NUM_LEVELS]),
    )
    return DynamiteImageFeatures(
        mask_features=mask_features, multi_scale_features=multi_scale, memory=memory, padded_size=padded_size
    )


class DynamiteImageEncoderForExport(nn.Module):
    """The per-image stage with flat outputs: `pixel_values` -> the tensors of `feature_names`."""

    def __init__(self, model: DynamiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return tuple(features_to_tensors(self.model.get_image_features(pixel_values)))


class DynamiteClickDecoderForExport(nn.Module):
    """The per-click stage with flat inputs: the feature tensors and the click tensors -> `pred_masks`."""

    def __init__(self, model: DynamiteModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, features: tuple[Tensor, ...], coords_yx: Tensor, normalized: Tensor, is_padding: Tensor
    ) -> Tensor:
        # padded_size is unused by the transformer (it reads the sizes off the tensors).
        image_features = tensors_to_features(features, self.model.config, padded_size=None)
        queries = DynamiteQueryBatch(coords_yx, normalized, is_padding, num_clicks_per_instance=[])
        pred_masks, _ = self.model.interactive_transformer(
            image_features.multi_scale_features, image_features.mask_features, image_features.memory, queries
        )
        return pred_masks


def _feature_dynamic_shapes(config: DynamiteConfig) -> tuple[dict[int, object], ...]:
    """torch.export dynamic axes of each feature tensor (sizes of the image and of the levels)."""
    from torch.export import Dim

    height4, width4, pixels4 = Dim("height_4"), Dim("width_4"), Dim("pixels_4")
    levels = [(Dim(f"height_{s}"), Dim(f"width_{s}"), Dim(f"pixels_{s}")) for s in (32, 16, 8)]
    shapes = [{2: height4, 3: width4}, *({2: h, 3: w} for h, w, _ in levels)]
    encoder = [{1: levels[index % _NUM_LEVELS][2]} for index in range(config.encoder_layers)]
    shapes += encoder + encoder
    if config.decoder_layers > 0:
        shapes += [{1: pixels4}, {1: pixels4}]
    shapes += [{2: h, 3: w} for h, w, _ in levels]
    return tuple(shapes)


def export_onnx(
    model: DynamiteModel, output_dir: str | os.PathLike, opset: int = DEFAULT_OPSET, verbose: bool = False
) -> dict[str, Path]:
    """Export `model`'s per-image and per-click stages to `output_dir` (created if needed).

    Both graphs take any image size (multiples of `config.size_divisibility`) and any number of clicks; the batch
    is one image. Returns the paths written, keyed `"image_encoder"`, `"click_decoder"`, `"metadata"`.
    Needs the `onnx` extra (onnx, onnxscript); uses the torch.export-based exporter (`dynamo=True`).
    """
    from torch.export import Dim

    from ..clicks import Click, order_clicks

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
    divisor = config.size_divisibility
    pixel_values = torch.randn(1, 3, 2 * divisor, 3 * divisor, generator=torch.Generator().manual_seed(0))
    clicks, counts = order_clicks([Click(0, 10.0, 20.0, 0, "model"), Click(None, 40.0, 70.0, 1, "model")])
    queries = DynamiteQueryBatch.from_clicks(
        [clicks], [counts], tuple(pixel_values.shape[-2:]), config.temporal_norm, None, torch.device("cpu")
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

    # Forms of the same functions that export well: the decoder attention pinned to the few-keys form (the query
    # count is symbolic in the graph; it is the faster form for the usual number of clicks), and the deformable
    # attention by grid_sample (ONNX GridSample; embedding_bag becomes a slow loop).
    layers = model.interactive_transformer.decoder_layers
    pins = [(layer, "use_few_keys_attention", True) for layer in layers] + [(layer, "min_keys", 0) for layer in layers]
    pins += [(module, "use_grid_sample", True) for module in model.modules() if hasattr(module, "use_grid_sample")]
    pins += [(module, "chunked", False) for module in model.modules() if hasattr(module, "chunked")]
    try:
        for module, name, value in pins:
            setattr(module, name, value)
        with torch.no_grad():
            features = features_to_tensors(model.get_image_features(pixel_values))
            encoder = torch.onnx.export(
                DynamiteImageEncoderForExport(model).eval(),
                (pixel_values,),
                dynamo=True,
                opset_version=opset,
                input_names=list(IMAGE_INPUT_NAMES),
                output_names=names,
                dynamic_shapes={"pixel_values": {2: divisor * Dim("height_32"), 3: divisor * Dim("width_32")}},
                verbose=verbose,
            )
            save(encoder, "image_encoder")
            num_clicks = Dim("num_clicks")
            decoder = torch.onnx.export(
                DynamiteClickDecoderForExport(model).eval(),
                (tuple(features), queries.coords_yx, queries.normalized, queries.is_padding),
                dynamo=True,
                opset_version=opset,
                input_names=[*names, *CLICK_INPUT_NAMES],
                output_names=list(CLICK_OUTPUT_NAMES),
                dynamic_shapes=(_feature_dynamic_shapes(config), {1: num_clicks}, {1: num_clicks}, {1: num_clicks}),
                verbose=verbose,
            )
            save(decoder, "click_decoder")
    finally:
        for module, name, _ in pins:
            delattr(module, name)  # back to the class default

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


class _OnnxClickDecoder:
    """Stands in for `DynamiteModel.interactive_transformer`: the same call, run by the click graph."""

    def __init__(self, session, input_names: list[str]) -> None:
        self.session = session
        self.input_names = input_names

    def __call__(
        self,
        multi_scale_features: Sequence[Tensor],
        mask_features: Tensor,
        memory: DynamiteTransformerMemory,
        queries: DynamiteQueryBatch,
        output_auxiliary: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        if output_auxiliary:
            raise ValueError("output_auxiliary=True is for training; the ONNX click decoder returns pred_masks only")
        if queries.coords_yx.shape[0] != 1:
            raise ValueError(f"the ONNX graphs take one image at a time, got a batch of {queries.coords_yx.shape[0]}")
        features = DynamiteImageFeatures(
            mask_features=mask_features, multi_scale_features=tuple(multi_scale_features), memory=memory
        )
        tensors = [*features_to_tensors(features), queries.coords_yx, queries.normalized, queries.is_padding]
        feed = {name: tensor.detach().cpu().numpy() for name, tensor in zip(self.input_names, tensors)}
        (pred_masks,) = self.session.run(list(CLICK_OUTPUT_NAMES), feed)
        return torch.from_numpy(pred_masks), []


class OnnxDynamiteModel:
    """`DynamiteModel`'s inference API (`get_image_features`, `forward` / `__call__`, `query_logits`) with both
    stages run by onnxruntime; `DynamitePredictor` takes it in place of a `DynamiteModel`.

    Build it with `OnnxDynamiteModel.from_pretrained(directory)` on a directory written by `export_onnx`.
    Tensors in and out are torch tensors on the CPU, as from the PyTorch model; batches hold one image.
    """

    # The click handling, post-processing and fusion of the PyTorch model, unchanged: only the two stages
    # (`get_image_features`, `interactive_transformer`) run in onnxruntime.
    forward = DynamiteModel.forward
    __call__ = DynamiteModel.forward
    query_logits = DynamiteModel.query_logits
    post_process_logits = staticmethod(DynamiteModel.post_process_logits)
    grouped_output_logits = staticmethod(DynamiteModel.grouped_output_logits)
    _check_pixel_values = DynamiteModel._check_pixel_values

    def __init__(self, config: DynamiteConfig, image_encoder, click_decoder) -> None:
        self.config = config
        self.image_encoder = image_encoder
        self.interactive_transformer = _OnnxClickDecoder(click_decoder, [i.name for i in click_decoder.get_inputs()])
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

    def get_image_features(self, pixel_values: Tensor) -> DynamiteImageFeatures:
        """Run the image-encoder graph: as `DynamiteModel.get_image_features`, for a batch of one image."""
        self._check_pixel_values(pixel_values)
        if pixel_values.shape[0] != 1:
            raise ValueError(
                f"pixel_values must hold one image (batch 1) for the ONNX graphs, got {pixel_values.shape[0]}"
            )
        pixels = pixel_values.detach().to("cpu", torch.float32).numpy()
        outputs = self.image_encoder.run(self.feature_names, {IMAGE_INPUT_NAMES[0]: pixels})
        tensors = [torch.from_numpy(output) for output in outputs]
        return tensors_to_features(tensors, self.config, (pixel_values.shape[-2], pixel_values.shape[-1]))


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

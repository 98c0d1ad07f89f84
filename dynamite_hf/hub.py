"""Model folders as the Hugging Face Hub serves them, written in one place and uploaded in one commit.

A model folder holds the weights, `config.json` and `preprocessor_config.json`, and the model's code: each saved
class's file and the files it imports, with an `auto_map` entry naming it (transformers' remote code), and the
pipeline (`custom_pipelines` in `config.json`). `AutoModel`, `AutoImageProcessor`, `AutoProcessor` and
`pipeline(...)` load such a folder with `trust_remote_code=True` where this package is not installed.

    save_model_folder(model, processor, "out")                 # what training, conversion and export write
    write_hub_folder("out", "upload", repo_id="user/model")    # exactly what push_to_hub uploads: + model card
    push_to_hub("out", "user/model")                           # one commit
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, ModelCardData

from .models.dynamite.configuration_dynamite import DynamiteConfig
from .models.dynamite.image_processing_dynamite import DynamiteImageProcessor
from .models.dynamite.modeling_dynamite import DynamiteModel
from .models.dynamite.pipeline_dynamite import PIPELINE_TASK, DynamiteImageSegmentationPipeline
from .models.dynamite.processing_dynamite import DynamiteProcessor

CARD_TAGS = ["dynamite", "interactive-segmentation", "multi-instance-segmentation", "click-based"]
# A training run's record, uploaded with the model when the folder has it.
RUN_SUMMARY = "train_summary.json"
WEIGHT_INDEX = "model.safetensors.index.json"
# A usage line of the card that names the model: the upload names the repository there instead.
_MODEL_ID_LINE = re.compile(r'^model_id = "[^"\n]*".*$', flags=re.M)
# Relative links of a Markdown card (`![plot](miou.png)`, `[licence](LICENSE)`): files the card shows.
_CARD_LINK = re.compile(r"\]\((?!https?:|#|/)([^)\s#]+)\)")
_MISSING = object()


def save_model_folder(
    model: DynamiteModel,
    processor: DynamiteProcessor | DynamiteImageProcessor,
    save_directory: str | os.PathLike,
) -> Path:
    """Write `model` and `processor` as a complete model folder: weights, `config.json` (with `auto_map` and the
    pipeline under `custom_pipelines`), `preprocessor_config.json` (with `auto_map`) and the model folder's code.

    Every model folder this project writes goes through here (training's final save, `export_checkpoint`, the
    conversion, `average_weights`, `grow_model`), so each one loads with `from_pretrained` as well as through
    remote code. The model's config is left as it was (the pipeline entry is written, not kept on it).
    """
    if isinstance(processor, DynamiteImageProcessor):
        processor = DynamiteProcessor(processor)
    if not isinstance(processor, DynamiteProcessor):
        raise TypeError(f"processor must be a DynamiteProcessor or DynamiteImageProcessor, got {type(processor)}")
    config = model.config
    previous = config.__dict__.get("custom_pipelines", _MISSING)
    try:
        # Pipeline.save_pretrained records the registered task in config.json, copies the pipeline's code and
        # saves the model (and the image processor); `device` keeps the model where it is.
        pipe = DynamiteImageSegmentationPipeline(
            model=model, image_processor=processor.image_processor, device=model.device
        )
        pipe.save_pretrained(save_directory)
    finally:
        if previous is _MISSING:
            config.__dict__.pop("custom_pipelines", None)
        else:
            config.custom_pipelines = previous
    processor.save_pretrained(save_directory)  # adds AutoProcessor to preprocessor_config.json's auto_map
    return Path(save_directory)


def update_model_folder(model_dir: str | os.PathLike) -> list[str]:
    """Rewrite the model folder `model_dir`'s code, `config.json` and `preprocessor_config.json` as this package
    writes them now, leaving its weights, card and other files as they are; code files the package no longer
    writes are removed. Returns the names of the files that changed.

    The bundled model is such a folder: run this (`scripts/update_model_folder.py`) after changing the model's code,
    which `tests/test_remote_code.py` checks."""
    from .predictor import load_processor

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ValueError(f"model: {folder} is not a model folder (no config.json); give a save_pretrained folder")
    with tempfile.TemporaryDirectory(prefix="dynamite-model-") as staging:
        written = save_model_folder(DynamiteModel.from_pretrained(folder), load_processor(folder), staging)
        fresh = {path.name: path for path in written.iterdir() if path.suffix in (".py", ".json")}
        changed = [name for name in sorted(fresh) if not _same_bytes(fresh[name], folder / name)]
        stale = [path.name for path in folder.glob("*.py") if path.name not in fresh]
        for name in changed:
            shutil.copyfile(fresh[name], folder / name)
    for name in stale:
        (folder / name).unlink()
    return changed + stale


def write_hub_folder(model_dir: str | os.PathLike, output_dir: str | os.PathLike, repo_id: str) -> Path:
    """Write into the empty or new `output_dir` exactly what `push_to_hub(model_dir, repo_id)` uploads.

    That is the model folder `model_dir` rewritten by `save_model_folder` (configs and code of this package), its
    weight files as they are on disk (byte for byte), its model card `README.md` with the repository named in the
    card's `model_id = "..."` usage lines and the metadata re-written by `huggingface_hub` (a card for DynaMITe is
    made when the folder has none), the files the card links to, and `train_summary.json` if present. Checkpoints,
    logs and other files of a training output folder stay behind.

    Raises:
        ValueError: naming the argument, for a folder that is not a model folder or an `output_dir` in use.
    """
    from .predictor import load_processor

    source, output = Path(model_dir), Path(output_dir)
    if not (source / "config.json").is_file():
        raise ValueError(f"model: {source} is not a model folder (no config.json); give a save_pretrained folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"local_dir: {output} exists and is not an empty folder; give a new or empty folder")
    _check_repo_id(repo_id)
    model = DynamiteModel.from_pretrained(source)
    save_model_folder(model, load_processor(source), output)
    source_weights = _weight_files(source)
    if source_weights:
        for written in _weight_files(output):
            written.unlink()
        for weights in source_weights:
            shutil.copyfile(weights, output / weights.name)
    card = model_card(source, repo_id, model.config)
    card.save(output / "README.md")
    linked = {RUN_SUMMARY, *_CARD_LINK.findall(card.text)}
    if card.data.license_link:
        linked.add(card.data.license_link)
    for name in sorted(linked):
        path = source / name
        if path.is_file() and not (output / name).exists() and path.resolve().is_relative_to(source.resolve()):
            (output / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, output / name)
    return output


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> CommitInfo:
    """Upload the model folder `model_dir` to the Hub repository `repo_id` (created if needed) in one commit: what
    `write_hub_folder` writes, plus the deletion of code and weight files an earlier upload left that this one no
    longer has (renamed code, other weight shards)."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="dynamite-upload-") as staging:
        folder = write_hub_folder(model_dir, Path(staging) / "upload", repo_id)
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        api.create_repo(repo_id, private=private, exist_ok=True)
        stale = [
            name
            for name in api.list_repo_files(repo_id)
            if name not in files and (name.endswith((".py", ".safetensors")) or name == WEIGHT_INDEX)
        ]
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload DynaMITe model: weights, configs, code and model card",
        )


def model_card(model_dir: str | os.PathLike, repo_id: str, config: DynamiteConfig) -> ModelCard:
    """The card of the folder (`README.md`, parsed by `huggingface_hub`), else one made for DynaMITe; its
    `model_id = "..."` usage lines name `repo_id`, and its metadata says what loads it (transformers, the
    image-segmentation pipeline)."""
    path = Path(model_dir) / "README.md"
    card = ModelCard.load(path) if path.is_file() else default_model_card(repo_id, config)
    card.data.library_name = "transformers"
    card.data.pipeline_tag = PIPELINE_TASK
    card.text = _MODEL_ID_LINE.sub(f'model_id = "{repo_id}"', card.text)
    return card


def default_model_card(repo_id: str, config: DynamiteConfig) -> ModelCard:
    """A card for a DynaMITe model folder that has none (a converted checkpoint, a training output)."""
    data = ModelCardData(library_name="transformers", pipeline_tag=PIPELINE_TASK, tags=list(CARD_TAGS))
    name = repo_id.split("/")[-1]
    text = f"""
# {name}

A [DynaMITe](https://arxiv.org/abs/2304.06668) model (interactive multi-instance segmentation from clicks, ICCV 2023)
with a `{config.backbone_type}` backbone, saved by dynamite-hf: transformers loads it with remote code (this repository
holds the model's code). The licence of the weights is not stated here: add `license` to this card's metadata.

## How to use
{USAGE}
## Citation

{CITATION}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


# The usage snippets of a made card (`model_card` names the repository in them); the bundled model's card has the same.
USAGE = """
With transformers only (the model's code comes from this repository):

```python
from PIL import Image
from transformers import AutoModel, AutoProcessor

model_id = "<repo id>"
model = AutoModel.from_pretrained(model_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

image = Image.open("photo.jpg").convert("RGB")
# (x, y) clicks in the photo's pixels; label k >= 1 = instance k, 0 = background
inputs = processor(image, input_points=[[[120, 300], [400, 80], [10, 10]]], input_labels=[[1, 2, 0]])
outputs = model(**inputs)
result = processor.post_process_masks(
    outputs.pred_masks, outputs.query_labels, inputs["original_sizes"], inputs["reshaped_input_sizes"], images=[image]
)[0]
print(result["masks"].shape, result["scores"])  # (2, height, width) bool masks, one per instance
```

The same as a pipeline:

```python
from transformers import pipeline

model_id = "<repo id>"
segmenter = pipeline("image-segmentation", model=model_id, trust_remote_code=True)
result = segmenter("photo.jpg", input_points=[[120, 300], [400, 80], [10, 10]], input_labels=[1, 2, 0])
print(result["masks"].shape, result["label_map"].unique())  # masks, scores and the label map (0 = background)
```
"""

CITATION = """```bibtex
@inproceedings{rana2023dynamite,
  title     = {DynaMITe: Dynamic Query Bootstrapping for Multi-object Interactive Segmentation Transformer},
  author    = {Rana, Amit Kumar and Mahadevan, Sabarinath and Hermans, Alexander and Leibe, Bastian},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023},
  note      = {arXiv:2304.06668}
}
```"""


def _same_bytes(path: Path, other: Path) -> bool:
    return other.is_file() and path.read_bytes() == other.read_bytes()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix == ".safetensors" or path.name == WEIGHT_INDEX)


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id or ""):
        raise ValueError(f"repo_id must be 'user-or-organisation/name', got {repo_id!r}")


__all__ = ["model_card", "push_to_hub", "save_model_folder", "update_model_folder", "write_hub_folder"]

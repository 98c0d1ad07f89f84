"""Model folders written by this project load where the package is not installed: transformers' `AutoModel`,
`AutoImageProcessor`, `AutoProcessor` and `pipeline(...)` with `trust_remote_code=True` run the folder's own code and
give the package's results. One subprocess, in a Python that cannot import `dynamite_hf`, loads every folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from remote_env import make_python_without_package, run_without_package
from safetensors.torch import load_file
from script_module import load_script
from tiny import tiny_model

from dynamite_hf import DynamiteImageProcessor, DynamiteModel, save_model_folder
from dynamite_hf.predictor import load_processor

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "dynamite-mobilenet-v2"
# The clicks of the cards' usage snippets: instances 1 and 2 and a background click, (x, y) in image pixels.
POINTS = [[120, 300], [400, 80], [10, 10]]
LABELS = [1, 2, 0]

REMOTE_SCRIPT = """
import json
import re
from PIL import Image
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, pipeline

FOLDERS, IMAGE, POINTS, LABELS, SNIPPETS = json.loads({arguments!r})
image = Image.open(IMAGE).convert("RGB")
classes = {{}}
for name, folder in FOLDERS.items():
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(image, input_points=[POINTS], input_labels=[LABELS])
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_masks(
        outputs.pred_masks, outputs.query_labels, inputs["original_sizes"], inputs["reshaped_input_sizes"],
        images=[image],
    )[0]
    segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
    piped = segmenter(IMAGE, input_points=POINTS, input_labels=LABELS)
    tensors = {{key: inputs[key] for key in ("pixel_values", "input_points", "input_labels")}}
    tensors.update(pred_masks=outputs.pred_masks, query_labels=outputs.query_labels)
    tensors.update({{key: value for key, value in result.items()}})
    tensors.update({{"pipeline_" + key: value for key, value in piped.items()}})
    save_file({{key: value.contiguous() for key, value in tensors.items()}}, name + ".safetensors")
    loaded = dict(config=config, model=model, image_processor=image_processor, processor=processor, pipeline=segmenter)
    classes[name] = {{key: type(value).__module__ + "." + type(value).__name__ for key, value in loaded.items()}}
for number, snippet in enumerate(SNIPPETS):
    print("snippet", number)
    exec(snippet, {{}})
import sys
classes["imported"] = sorted(name for name in sys.modules if "dynamite" in name and "transformers_modules" not in name)
json.dump(classes, open("classes.json", "w"))
"""


def card_snippets(card: Path, model_id: str, image: Path) -> list[str]:
    """The card's Python blocks that need only transformers, with the model and the photo replaced by local ones."""
    blocks = re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.S)
    usable = [block for block in blocks if "dynamite_hf" not in block]
    return [
        re.sub(r'^model_id = "[^"]*"', f"model_id = {model_id!r}", block, flags=re.M).replace(
            '"photo.jpg"', repr(str(image))
        )
        for block in usable
    ]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Run the remote script on a saved tiny model (with boundary refinement), the bundled model, the folder
    `scripts/push_to_hub.py --local-dir` writes for the tiny one and the tiny one loaded and saved again with plain
    `save_pretrained`; returns what the script wrote and printed."""
    work = tmp_path_factory.mktemp("remote")
    image = work / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image)
    saved = work / "saved"
    save_model_folder(tiny_model(), DynamiteImageProcessor.from_preset("mobilenet_v2", guided_filter_radius=4), saved)
    upload = work / "upload"
    load_script("push_to_hub.py").main(
        ["--model", str(saved), "--repo-id", "someone/dynamite-tiny", "--local-dir", str(upload)]
    )
    # A model loaded from such a folder and saved with plain save_pretrained: still a whole folder, pipeline included.
    resaved = work / "resaved"
    DynamiteModel.from_pretrained(saved).save_pretrained(resaved)
    load_processor(saved).save_pretrained(resaved)
    folders = {"saved": str(saved), "bundled": str(BUNDLED), "upload": str(upload), "resaved": str(resaved)}
    snippets = card_snippets(BUNDLED / "README.md", str(BUNDLED), image)
    snippets += card_snippets(upload / "README.md", str(upload), image)
    arguments = json.dumps([folders, str(image), POINTS, LABELS, snippets])
    python = make_python_without_package(work / "env")
    result = run_without_package(python, REMOTE_SCRIPT.format(arguments=arguments), work)
    return {"work": work, "image": image, "folders": folders, "snippets": snippets, "stdout": result.stdout}


def package_results(folder: str, image: Path) -> dict[str, torch.Tensor]:
    """What the package computes for the remote script's inputs."""
    model = DynamiteModel.from_pretrained(folder).eval()
    processor = load_processor(folder)
    photo = Image.open(image).convert("RGB")
    inputs = processor(photo, input_points=[POINTS], input_labels=[LABELS])
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_masks(
        outputs.pred_masks,
        outputs.query_labels,
        inputs["original_sizes"],
        inputs["reshaped_input_sizes"],
        images=[photo],
    )[0]
    tensors = {key: inputs[key] for key in ("pixel_values", "input_points", "input_labels")}
    return {**tensors, "pred_masks": outputs.pred_masks, "query_labels": outputs.query_labels, **result}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["saved", "bundled", "upload", "resaved"])
def test_the_folder_loads_through_remote_code_and_gives_the_package_results(remote, name) -> None:
    classes = json.loads((remote["work"] / "classes.json").read_text())
    assert classes["imported"] == [], classes["imported"]  # nothing named dynamite outside the remote modules
    for kind, qualified in classes[name].items():
        assert qualified.startswith("transformers_modules."), (kind, qualified)  # the folder's own code
    assert classes[name]["pipeline"].endswith("pipeline_dynamite.DynamiteImageSegmentationPipeline")
    remote_tensors = load_file(remote["work"] / f"{name}.safetensors")
    expected = package_results(remote["folders"][name], remote["image"])
    for key, value in expected.items():
        torch.testing.assert_close(remote_tensors[key], value, rtol=0, atol=0, msg=key)
        if key in ("masks", "label_map", "scores"):  # the pipeline gives what the processor post-processing gives
            torch.testing.assert_close(remote_tensors[f"pipeline_{key}"], value, rtol=0, atol=0, msg=key)
    assert expected["masks"].shape[0] == 2
    if name == "bundled":  # trained weights: both clicked instances get a mask (the tiny random models' are empty)
        assert expected["masks"].any(dim=(1, 2)).all()


@pytest.mark.slow
def test_the_cards_usage_snippets_run_without_the_package(remote) -> None:
    """The bundled card's and a made card's transformers-only snippets (the Auto classes, the pipeline), run
    against the local folders."""
    assert len(remote["snippets"]) == 4
    for number in range(len(remote["snippets"])):
        assert f"snippet {number}" in remote["stdout"]
    assert remote["stdout"].count("torch.Size([2, 480, 640])") == 4


def test_the_bundled_folder_is_what_the_package_writes(tmp_path) -> None:
    """Every file `save_model_folder` writes for the bundled model (code, configs, weights) equals the bundled one,
    and the bundled folder holds no other code: its code is the package's."""
    written = save_model_folder(DynamiteModel.from_pretrained(BUNDLED), load_processor(BUNDLED), tmp_path / "out")
    names = sorted(path.name for path in written.iterdir())
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "pipeline_dynamite.py"} <= set(names)
    differing = [name for name in names if (BUNDLED / name).read_bytes() != (written / name).read_bytes()]
    extra_code = sorted({path.name for path in BUNDLED.glob("*.py")} - set(names))
    assert not differing and not extra_code, (
        f"the bundled folder's {differing + extra_code} differ from the package's: run "
        "python scripts/update_model_folder.py --model models/dynamite-mobilenet-v2"
    )
    package_code = {path.name for path in (ROOT / "dynamite_hf" / "models" / "dynamite").glob("*.py")}
    assert {name for name in names if name.endswith(".py")} == package_code - {"__init__.py"}

"""A Hugging Face Space of the app, assembled in one folder: the app, this package, the model (a folder, or a Hub id
the Space downloads at start), the requirements with PyTorch's CPU build, LFS rules and the Space's card.

    build_space("runs/space")                                  # the bundled model
    build_space("runs/space", model="user/dynamite-swin-tiny")  # a model on the Hub

The folder is what the Space repository holds: upload it with `hf upload <user>/<space> runs/space . --repo-type
space` (after `hf repos create <user>/<space> --repo-type space --space-sdk gradio`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from huggingface_hub import ModelCard, SpaceCard, SpaceCardData

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = ROOT / "models" / "dynamite-mobilenet-v2"
# The Python the project is tested on (PyTorch 2.13.0 publishes CPU wheels for it).
SPACE_PYTHON = "3.11"
# Files git should keep in LFS: the Hub refuses binary files pushed as plain git objects.
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.npy",
    "*.npz",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.webp",
    "*.zip",
    "*.gz",
    "*.tar",
)

SPACE_APP = '''#!/usr/bin/env python
"""This Space's entry point, written by dynamite-hf's scripts/build_space.py: the dynamite-hf app (dynamite_app.py,
the project's app.py) on the model below. A DYNAMITE_MODEL variable in the Space's settings overrides it."""

import os
{imports}
from dynamite_app import main

os.environ.setdefault("DYNAMITE_MODEL", {model})

if __name__ == "__main__":
    main()
'''


def build_space(output_dir: str | os.PathLike, model: str | os.PathLike | None = None, root: Path = ROOT) -> Path:
    """Write the Space folder into the new or empty `output_dir`.

    Args:
        model: a model folder (copied into the Space under `models/<its name>`), or a Hub id `user/name` (the
            Space downloads it when it starts). Default: the bundled model.
        root: the dynamite-hf source checkout that holds `app.py`, `requirements.txt` and the package.

    Raises:
        ValueError: naming the argument, for a model that is neither a model folder nor a Hub id, an output folder
            in use, or a checkout without the app.
    """
    output = Path(output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"output: {output} exists and is not an empty folder; give a new or empty folder")
    for needed in ("app.py", "requirements.txt", "dynamite_hf"):
        if not (root / needed).exists():
            raise ValueError(f"building a Space needs a dynamite-hf source checkout: {root / needed} is missing")
    model = BUNDLED_MODEL if model is None else model
    folder = Path(model)
    if (folder / "config.json").is_file():
        hub_id, model_path = None, f"models/{folder.resolve().name}"
    elif re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", str(model)) and not folder.exists():
        hub_id, model_path = str(model), None
    else:
        raise ValueError(f"model must be a model folder (with config.json) or a Hub id user/name, got {str(model)!r}")

    output.mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / "dynamite_hf", output / "dynamite_hf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(root / "app.py", output / "dynamite_app.py")
    requirements = (root / "requirements.txt").read_text()
    (output / "requirements.txt").write_text(requirements)
    if model_path is not None:
        (output / model_path).mkdir(parents=True)
        for path in sorted(folder.iterdir()):  # the model's files; checkpoints and logs of a run stay behind
            if path.is_file() and not path.name.startswith("."):
                shutil.copyfile(path, output / model_path / path.name)
        default = f'str(Path(__file__).parent / "{model_path}")'
    else:
        default = repr(hub_id)
    imports = "from pathlib import Path\n" if model_path is not None else ""
    (output / "app.py").write_text(SPACE_APP.format(model=default, imports=imports))
    (output / ".gitattributes").write_text(
        "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
    )
    space_card(requirements, hub_id, model_path, folder if model_path else None).save(output / "README.md")
    return output


def space_card(requirements: str, hub_id: str | None, model_path: str | None, model_folder: Path | None) -> SpaceCard:
    """The Space's README: the metadata the Hub builds it from (SDK and its version, Python, hardware) and a short
    text. Its licence is the model's where the Space holds the weights, else the code's (Apache-2.0)."""
    gradio = re.search(r"^gradio==([\w.]+)\s*$", requirements, flags=re.M)
    if gradio is None:
        raise ValueError("requirements.txt must pin gradio (gradio==X.Y.Z): the Space's sdk_version is that version")
    licence: dict[str, str] = {"license": "apache-2.0"}
    if model_folder is not None and (model_folder / "README.md").is_file():
        model_card = ModelCard.load(model_folder / "README.md").data
        if model_card.license:
            licence = {"license": model_card.license}
            if model_card.license_name:
                licence["license_name"] = model_card.license_name
            if model_card.license_link and not re.match(r"https?:", model_card.license_link):
                licence["license_link"] = f"{model_path}/{model_card.license_link}"
            elif model_card.license_link:
                licence["license_link"] = model_card.license_link
    hub = {"models": [hub_id], "preload_from_hub": [hub_id]} if hub_id else {}
    data = SpaceCardData(
        title="DynaMITe",
        sdk="gradio",
        sdk_version=gradio.group(1),
        python_version=SPACE_PYTHON,
        app_file="app.py",
        tags=["interactive-segmentation", "dynamite"],
        emoji="🖱️",
        colorFrom="blue",
        colorTo="green",
        short_description="Segment several objects at once from clicks (DynaMITe)",
        suggested_hardware="cpu-basic",
        **licence,
        **hub,
    )
    model = hub_id or model_path
    text = f"""
# DynaMITe: several objects segmented at once from clicks

Click the objects of a photo to segment several at once, and the background to take pixels away: every click
refines all masks ([DynaMITe](https://arxiv.org/abs/2304.06668), ICCV 2023). The masks download as a label-map PNG
and COCO JSON.

The model is `{model}`. This folder was written by dynamite-hf's `scripts/build_space.py`: `app.py` starts
`dynamite_app.py` (the project's app) on that model, `dynamite_hf/` is the package, and `requirements.txt` installs
PyTorch's CPU build. To run it elsewhere: `pip install -r requirements.txt && python app.py`.
"""
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n{text}")


__all__ = ["build_space"]

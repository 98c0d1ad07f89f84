"""The Space folder `scripts/build_space.py` assembles: what a CPU Space's build reads (SDK and Python versions, the
CPU-only torch, LFS rules), and the folder itself, in a fresh virtual environment made from its own
requirements.txt, starting app.py and answering a click over HTTP."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import free_port
from huggingface_hub import SpaceCard
from PIL import Image
from script_module import load_script

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "dynamite-mobilenet-v2"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def build(output: Path, *arguments: str) -> Path:
    load_script("build_space.py").main(["--output", str(output), *arguments])
    return output


def is_binary(path: Path) -> bool:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def test_the_space_folder_has_what_a_cpu_space_builds_from(tmp_path) -> None:
    import gradio

    space = build(tmp_path / "space")
    card = SpaceCard.load(space / "README.md").data
    requirements = (space / "requirements.txt").read_text().splitlines()
    # The Space's Gradio and Python are the tested ones; torch is the tested version's CPU build from PyTorch's index.
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"--extra-index-url {CPU_INDEX}" in requirements
    assert f"torch=={torch.__version__}" in requirements and torch.__version__.endswith("+cpu")
    assert f"gradio=={gradio.__version__}" in requirements
    # Every runtime dependency of the package is installed.
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].lower() for line in requirements if line[:1].isalpha()}
    assert {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in dependencies} <= names
    # Every binary file is in LFS (a git push of the weights would be refused otherwise).
    patterns = [line.split()[0] for line in (space / ".gitattributes").read_text().splitlines() if "filter=lfs" in line]
    binaries = [path for path in space.rglob("*") if path.is_file() and is_binary(path)]
    assert {path.name for path in binaries} >= {"model.safetensors", "miou_per_click.png"}
    assert all(any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns) for path in binaries), binaries
    # The app, the package as it is here, and the model the app starts on.
    assert (space / "dynamite_app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dynamite_hf").rglob("*.py")}
    assert {p.relative_to(space).as_posix() for p in (space / "dynamite_hf").rglob("*.py")} == package
    assert not list(space.rglob("__pycache__"))
    assert (space / "models" / "dynamite-mobilenet-v2" / "model.safetensors").read_bytes() == (
        BUNDLED / "model.safetensors"
    ).read_bytes()
    assert '"models/dynamite-mobilenet-v2"' in (space / "app.py").read_text()
    # The Space holds the weights: their licence.
    assert (card.license, card.license_name) == ("other", "research-only")
    assert (space / card.license_link).is_file()


def test_a_space_on_a_hub_model_downloads_it_when_it_starts(tmp_path) -> None:
    space = build(tmp_path / "space", "--model", "someone/dynamite-swin-tiny")
    card = SpaceCard.load(space / "README.md").data
    assert card.models == ["someone/dynamite-swin-tiny"] and card.preload_from_hub == ["someone/dynamite-swin-tiny"]
    assert card.license == "apache-2.0" and not (space / "models").exists()
    assert "os.environ.setdefault(\"DYNAMITE_MODEL\", 'someone/dynamite-swin-tiny')" in (space / "app.py").read_text()


@pytest.mark.parametrize(
    ("model", "message"),
    [("no/such/folder/here", "model must be a model folder"), ("not-an-id", "model must be a model folder")],
)
def test_bad_space_arguments_are_named(model, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        build(tmp_path / "space", "--model", model)
    assert message in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(SystemExit):
        build(tmp_path / "used")
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.slow
def test_the_space_starts_from_its_own_requirements_and_answers_a_click(tmp_path) -> None:
    """A fresh virtual environment from the Space's requirements.txt alone (pip as a Space's build runs it; offline,
    `--retries 0` lets pip pass over the unreachable CPU index at once, and the tested CPU wheel comes from this
    machine's --find-links folder), then `python app.py` as a Space starts it, driven over HTTP."""
    from test_app import run_session

    from dynamite_hf import Click, DynamiteModel, DynamitePredictor

    space = build(tmp_path / "space")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--retries", "0", "-r", str(space / "requirements.txt")]
    result = subprocess.run(install, env=environment, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    check = "import torch, importlib.util; print(torch.__version__, importlib.util.find_spec('dynamite_hf'))"
    versions = subprocess.run([python, "-c", check], env=environment, capture_output=True, text=True, cwd=tmp_path)
    assert versions.stdout.split() == [torch.__version__, "None"], versions  # the CPU build; no package installed
    installed = subprocess.run([python, "-m", "pip", "list"], env=environment, capture_output=True, text=True).stdout
    assert "nvidia" not in installed.lower(), installed  # no CUDA libraries pulled in

    port = free_port()
    environment.update(
        GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="0"
    )
    process = subprocess.Popen(
        [python, "app.py"], cwd=space, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, f"the Space's app did not answer at {url}"
                time.sleep(0.5)
        image = tmp_path / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(image)
        label_map, messages = run_session(url, str(image), [("click", 60, 80, False)])
    finally:
        process.terminate()
        process.wait(timeout=30)
    predictor = DynamitePredictor(DynamiteModel.from_pretrained(BUNDLED))
    predictor.set_image(str(image))
    predictor.set_clicks([Click(0, 60.0, 80.0, 0)])
    assert label_map.any() and np.array_equal(label_map, predictor.label_map), messages

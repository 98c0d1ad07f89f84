"""The README as a new user meets it: every code block runs as written (Python blocks and the batch CLI for real on
the bundled model; the other commands as far as they can run offline: their arguments parsed by the scripts' own
parsers, make targets resolved), its links and the docs' limits table hold, and it stays a short guide."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tomllib
from PIL import Image

from dynamite_hf.app.limits import AppLimits

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MODEL = ROOT / "models" / "dynamite-mobilenet-v2"
EXAMPLES = ROOT / "dynamite_hf" / "app" / "examples"


def blocks(language: str | None = None) -> list[tuple[str, str]]:
    """The README's fenced blocks as (language, text), in order."""
    found = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
    return [(lang, text) for lang, text in found if language is None or lang == language]


def commands(text: str) -> list[list[str]]:
    """A bash block's commands, continuation lines joined, comments dropped, as argument lists."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


class Parsed(Exception):
    pass


def parse_only(target: str, arguments: list[str]) -> argparse.Namespace:
    """Run script `target` (a path, or `-m module`) with `arguments` until its parser has parsed them: the parsed
    namespace, or the parser's own error (a misspelled or missing argument fails here as it would for a user)."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = original(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise Parsed(namespace)

    error = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args),
        mock.patch.object(sys, "argv", [target, *arguments]),
        contextlib.redirect_stderr(error),
    ):
        try:
            if target.startswith("-m "):
                runpy.run_module(target[3:], run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(str(ROOT / target), run_name="__main__")
        except Parsed as parsed:
            return parsed.args[0]
        except SystemExit as exit_:
            pytest.fail(f"{target} {shlex.join(arguments)}: the parser refused it ({exit_.code}): {error.getvalue()}")
    pytest.fail(f"{target} {shlex.join(arguments)} ran to its end without parsing arguments")


def check_command(command: list[str]) -> None:
    """One README command, as far as it runs offline without data it names."""
    program, *arguments = command
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(arguments) <= set(targets), f"make {arguments}: the Makefile has {targets}"
    elif program == "pip":
        assert arguments[0] == "install"
        if "--index-url" in arguments:  # PyTorch's CPU wheels
            assert arguments[1:] == ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
            return
        from packaging.requirements import Requirement

        requirement = Requirement(arguments[1])
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert requirement.name == project["name"] and requirement.url.startswith("git+")
        assert requirement.extras <= set(project["optional-dependencies"])
    elif program == "hf":  # the Hub's CLI, offline: the subcommand and its options exist
        subcommand = []
        for word in arguments:
            if not re.fullmatch(r"[a-z-]+", word) or word.startswith("-"):
                break
            subcommand.append(word)
        shown = subprocess.run(
            [shutil.which("hf") or str(Path(sys.executable).parent / "hf"), *subcommand, "--help"],
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        for option in (word for word in arguments if word.startswith("--")):
            assert option in shown.stdout, f"hf {' '.join(subcommand)} has no {option}"
    elif program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert arguments[0] == "launch"
        launch = launch_command_parser().parse_args(arguments[1:])
        target = f"-m {launch.training_script}" if launch.module else launch.training_script
        parse_only(target, launch.training_script_args)
    elif program == "python":
        parse_only(arguments[0], arguments[1:])
    elif program == "dynamite-segment":
        parse_only("-m dynamite_hf.batch", arguments)
    else:
        pytest.fail(f"no check for the README command {shlex.join(command)}")


def test_the_readme_is_a_short_guide() -> None:
    assert len(README.splitlines()) <= 300
    hashes = [word for word in re.findall(r"\b[0-9a-f]{7,40}\b", README) if re.search("[a-f]", word)]
    assert not hashes, f"commit hashes belong in git history: {hashes}"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_each_readme_command_parses_as_written(index, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    for command in commands(blocks("bash")[index][1]):
        check_command(command)


def test_every_readme_block_is_checked() -> None:
    """A new kind of block needs a check here (or in the test that runs it)."""
    for language, text in blocks():
        assert language in ("bash", "python", "json", "bibtex"), f"no check for a {language!r} block: {text[:80]}"
    (bibtex,) = [text for language, text in blocks("bibtex")]
    assert bibtex in (MODEL / "README.md").read_text(), "the README and the model card cite the paper alike"
    # The gradio_client block runs against a real server in tests/test_app.py.
    assert [t for _, t in blocks("python") if 'api_name="/segment"' in t]
    assert "test_the_stateless_call_segments_an_image_from_json_clicks" in (ROOT / "tests/test_app.py").read_text()


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder as a user's: `photo.jpg` (a 512x512 photo), `photos/cat.jpg` and the README's `clicks.json`."""
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    shutil.copy(EXAMPLES / "cat.jpg", tmp_path / "photos" / "cat.jpg")
    ((clicks,),) = [[t] for language, t in blocks("json")]
    (tmp_path / "clicks.json").write_text(clicks)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def run_python_block(text: str) -> dict:
    code = text.replace('"models/dynamite-mobilenet-v2"', repr(str(MODEL)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("index", [i for i, (_, t) in enumerate(blocks("python")) if "/segment" not in t])
def test_each_readme_python_block_runs_and_segments_the_clicked_objects(index, user_folder) -> None:
    namespace = run_python_block(blocks("python")[index][1])
    if "predictor" in namespace:  # two instances clicked, the background click undone
        predictor = namespace["predictor"]
        assert namespace["masks"].shape == (2, 512, 512) and namespace["masks"].any(axis=(1, 2)).all()
        assert [c.instance for c in predictor.clicks] == [0, 1, 0]
        saved = np.asarray(Image.open(user_folder / "label_map.png"))
        assert np.array_equal(saved, predictor.label_map)
        coco = json.loads((user_folder / "coco.json").read_text())
        assert [a["instance"] for a in coco["annotations"]] == [0, 1]
    else:  # the transformers call or the pipeline
        result = namespace["result"]
        masks, label_map = result["masks"], result["label_map"]
        assert tuple(masks.shape) == (2, 512, 512) and masks.flatten(1).any(1).all()
        assert len(result["scores"]) == 2 and set(np.unique(label_map.numpy())) <= {0, 1, 2}


def test_the_readme_batch_command_writes_each_images_results(user_folder) -> None:
    (segment,) = [c for _, t in blocks("bash") for c in commands(t) if c[0] == "dynamite-segment"]
    arguments = [str(MODEL) if a == "models/dynamite-mobilenet-v2" else a for a in segment[1:]]
    from dynamite_hf import batch

    batch.main(arguments)
    label_map = np.asarray(Image.open(user_folder / "results" / "cat" / "label_map.png"))
    assert label_map.shape == (300, 451) and label_map[120, 300] == 1  # instance 0 holds its click


def test_the_apps_limits_table_is_the_apps_limits() -> None:
    """docs/app.md lists every limit with its argument, variable and default, as `app.py` takes them."""
    text = (ROOT / "docs" / "app.md").read_text()
    rows = re.findall(r"^\| ([^|]+) \| `(--[\w-]+)` \| `(\w+)` \| (\d+) \| ([^|]+) \|$", text, flags=re.M)
    expected = [
        (f.metadata["unit"], AppLimits.flag(f.name), AppLimits.variable(f.name), str(f.default), f.metadata["why"])
        for f in fields(AppLimits)
    ]
    assert [tuple(part.strip() for part in row) for row in rows] == expected

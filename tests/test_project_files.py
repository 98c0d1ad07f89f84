"""What a new user meets first: the README's commands and the packaging metadata."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_commands_work_from_a_fresh_shell() -> None:
    """A fresh shell has neither the packages nor `dynamite-segment` on PATH: the README must say to use .venv
    (make, `.venv/bin/`, or activating it) before its first bare `python` / `dynamite-segment` command."""
    readme = (ROOT / "README.md").read_text()
    bare = re.search(r"^(python3?|dynamite-segment|accelerate) ", readme, flags=re.M)
    assert bare is not None  # the training and evaluation sections use bare commands
    activation = readme.find("source .venv/bin/activate")
    assert 0 <= activation < bare.start(), f"README uses {bare.group(0)!r} before saying how to enter .venv"
    assert "make demo" in readme and "`.venv/bin/`" in readme
    # `make test` runs the browser test only where Chromium is installed: `make browser` installs it.
    assert "make browser" in readme and re.search(r"^browser:", (ROOT / "Makefile").read_text(), flags=re.M)


def test_pyproject_has_no_deprecated_metadata() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")
    deprecations = [str(w.message) for w in caught if "Deprecat" in w.category.__name__]
    assert not deprecations, deprecations

"""A Python that has this project's dependencies (torch, transformers, ...) but not the package: a virtual environment
without the editable install, seeing the test environment's site-packages through a `.pth` file (whose own `.pth`
files, such as the editable install's finder, are not run from there). Remote-code tests run their scripts in it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# The first thing every script checks: it must not be able to import the package.
NO_PACKAGE_CHECK = """
import importlib.util, sys
assert importlib.util.find_spec("dynamite_hf") is None, "dynamite_hf is importable: " + str(sys.path)
"""


def make_python_without_package(folder: Path) -> Path:
    """Create the environment in `folder`; returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(paths)))
    return python


def run_without_package(python: Path, script: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `script` (after `NO_PACKAGE_CHECK`) with `python`, offline, in `cwd`, with a fresh transformers modules
    cache (remote code is copied there) and no PYTHONPATH; raises with its output if it fails."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf_modules"))
    path = cwd / "remote_script.py"
    path.write_text(NO_PACKAGE_CHECK + script)
    result = subprocess.run([str(python), str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result

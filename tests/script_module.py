"""Import a file of `scripts/` (or any Python file) as a module, for the tests that call a script's functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """The module of `path` (a name in `scripts/`, such as "evaluate.py", or a full path), executed once per call."""
    path = Path(path)
    if not path.is_absolute():
        path = SCRIPTS / path
    spec = importlib.util.spec_from_file_location(name or f"{path.stem}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

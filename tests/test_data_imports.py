"""One home for the dataset readers and the schema (`dynamite_hf.data`): the former modules re-export it, and
neither imports the other, in either import order."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVALUATION_READERS, SCHEMA = "dynamite_hf.evaluation.datasets", "dynamite_hf.instance_datasets"

PROBE = """
import importlib, json, sys
first, second = sys.argv[1:]
importlib.import_module(first)
loaded_by_first = sorted(m for m in sys.modules if m.startswith("dynamite_hf"))
importlib.import_module(second)
print(json.dumps(loaded_by_first))
"""


@pytest.mark.parametrize(("first", "second"), [(EVALUATION_READERS, SCHEMA), (SCHEMA, EVALUATION_READERS)])
def test_either_module_imports_first_without_the_other(first, second) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, first, second], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert first in loaded and second not in loaded, loaded


def test_the_benchmark_readers_never_import_the_schema() -> None:
    """`data.instances` builds on `data.benchmarks`; the reverse import (even inside a function) would bring the
    cycle back."""
    tree = ast.parse((ROOT / "dynamite_hf" / "data" / "benchmarks.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [name for name in imported if "instance" in name or "evaluation" in name], imported


def test_the_former_homes_re_export_the_same_objects() -> None:
    import dynamite_hf.evaluation as evaluation
    import dynamite_hf.evaluation.datasets as evaluation_datasets
    import dynamite_hf.instance_datasets as instance_datasets
    from dynamite_hf.data import benchmarks, instances

    for name in evaluation_datasets.__all__:
        home = benchmarks if hasattr(benchmarks, name) else instances
        assert getattr(evaluation_datasets, name) is getattr(home, name), name
    for name in instance_datasets.__all__:
        assert getattr(instance_datasets, name) is getattr(instances, name), name
    for name in ("DATASETS", "EvaluationSample", "read_dataset", "iter_dataset", "to_hf_dataset", "from_hf_row"):
        assert getattr(evaluation, name) is getattr(evaluation_datasets, name), name
    for home, former in ((instances, instance_datasets), (benchmarks, evaluation_datasets)):
        public = {
            n for n, v in vars(home).items() if not n.startswith("_") and getattr(v, "__module__", "") == home.__name__
        }
        assert public <= set(former.__all__), public - set(former.__all__)

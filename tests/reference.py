"""Access to the original implementation's parity fixtures in ../shared/reference (see its README)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_module import load_script

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"
SEED = 1246

# Our preset name -> the original config whose outputs are stored.
CONFIGS = {
    "resnet50": "dynamite_R50_bs32_ep50",
    "hrnet_w32": "dynamite_hrnet32_bs32_ep50",
    "mit_b0": "dynamite_mitb0_bs32_ep50",
    "swin_tiny": "dynamite_swin_tiny_bs32_ep50",
    "swin_large": "dynamite_swin_large_bs32_ep100",
}

requires_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference fixtures not found at {REFERENCE} (../shared beside the clone)"
)
requires_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")


@functools.cache
def _recipe():
    return load_script(REFERENCE / "weights_recipe.py", "weights_recipe")


def original_state_dict(config_name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The recipe weights under the original key names (only keys starting with `prefix`).

    Integer buffers are created as zeros (num_batches_tracked) or left out (Swin's relative_position_index,
    which our model recomputes), and bg_query stays zero, as in the reference model.
    """
    keys = json.loads((REFERENCE / f"{config_name}_keys.json").read_text())["keys"]
    state = {}
    for entry in keys:
        name = entry["name"]
        if not name.startswith(prefix):
            continue
        if not entry["filled_by_recipe"]:
            if name.endswith("relative_position_index"):
                continue
            dtype = getattr(torch, entry["dtype"].replace("torch.", ""))
            state[name] = torch.zeros(entry["shape"], dtype=dtype)
            continue
        state[name] = _recipe().recipe_value(name, tuple(entry["shape"]), SEED)
    return state


@functools.cache
def inputs() -> dict[str, torch.Tensor]:
    return load_file(REFERENCE / "inputs.safetensors")


@functools.cache
def outputs(config_name: str) -> dict[str, torch.Tensor]:
    return load_file(REFERENCE / f"{config_name}.safetensors")


def reference_clicks(image: str, scenario: str):
    """The scenario's clicks as `Click`s in the model frame (the reference feeds images unresized)."""
    from dynamite_hf import Click

    data = inputs()
    key = "B" if scenario == "C" else scenario
    coords = data[f"{image}.{key}.clicks"].tolist()
    counts = data[f"{image}.{key}.num_clicks_per_object"].tolist()
    owners = [i for i, n in enumerate(counts) for _ in range(n)]
    owners += [None] * (len(coords) - len(owners))
    return [Click(owner, row, col, int(t), frame="model") for owner, (row, col, t) in zip(owners, coords)]


def near_ties(config_name: str, image: str, scenario: str, width: int) -> torch.Tensor:
    index = outputs(config_name)[f"{image}.{scenario}.near_tie_idx"]
    return torch.stack([index // width, index % width], -1)

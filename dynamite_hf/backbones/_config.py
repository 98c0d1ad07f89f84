"""Merging a backbone_config dict with a family's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_backbone_config(family: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated by `given`; a key the family does not know is a `ValueError` naming it."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {family} backbone_config keys {sorted(unknown)}; expected {sorted(defaults)}")
    return {**defaults, **given}

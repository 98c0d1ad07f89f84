"""What one visitor of the public app may ask of it: every limit, its default and why, and how to change it.

Each limit is an `app.py` argument and an environment variable (on a Space, a variable in its settings), named after
the field: `max_instances` is `--max-instances` and `DYNAMITE_MAX_INSTANCES`. A request over a limit is refused with a
message that names the limit and that pair, and the session keeps everything it had.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from ..predictor import DEFAULT_MAX_CLICKS, DEFAULT_MAX_INSTANCES

ENVIRONMENT_PREFIX = "DYNAMITE_"


def _limit(default: int, unit: str, why: str) -> int:
    return field(default=default, metadata={"unit": unit, "why": why})


@dataclass(frozen=True)
class AppLimits:
    """The app's limits (positive integers); `AppLimits()` holds the defaults."""

    max_instances: int = _limit(
        DEFAULT_MAX_INSTANCES, "instances per image", "the most the model was trained with on one image"
    )
    max_clicks: int = _limit(
        DEFAULT_MAX_CLICKS,
        "clicks per image",
        "10 per instance (the paper's multi-instance budget), under the model's temporal normaliser (500 clicks)",
    )
    max_images: int = _limit(
        50, "images per session", "each is a file on disk and its masks; an export computes every one"
    )
    max_upload_mb: int = _limit(
        25, "MB per uploaded file", "a 48-megapixel phone JPEG is 10-20 MB; the app works at 2048 px at most"
    )
    max_request_kb: int = _limit(256, "KB per request other than file uploads", "300 clicks as JSON take about 15 KB")
    max_megapixels: int = _limit(
        100, "megapixels per image, checked before decoding", "decoding takes up to 4 bytes per pixel (400 MB)"
    )
    max_history_kb: int = _limit(
        256, "KB of undo history per image", "about 90 steps at the clicks limit, thousands at a few clicks"
    )
    max_pending: int = _limit(
        4, "requests per session waiting or running at once", "the page itself never has more than 3"
    )
    max_requests_per_second: int = _limit(
        10,
        "requests per session per second, in bursts of twice that",
        "the page sends one at a time, each after the last answer; a loop of cheap requests costs the server's time",
    )
    max_queue: int = _limit(64, "requests waiting at once, all sessions", "requests beyond are told the app is busy")
    session_idle_minutes: int = _limit(
        360, "minutes a session is kept after its last action", "for clients that never close their session"
    )
    closed_session_seconds: int = _limit(
        300,
        "seconds a closed page's session is kept, should the page come back",
        "a dropped connection comes back within seconds; until then the session holds its uploads and memory",
    )

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{limit.name} must be a positive integer ({limit.metadata['unit']}), got {value!r}")

    @staticmethod
    def flag(name: str) -> str:
        """The `app.py` argument of limit `name`: `--max-instances`."""
        return "--" + name.replace("_", "-")

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable of limit `name`: `DYNAMITE_MAX_INSTANCES`."""
        return ENVIRONMENT_PREFIX + name.upper()

    @classmethod
    def how_to_change(cls, name: str) -> str:
        """Words for a refusal: how the app's operator changes limit `name`."""
        return f"the app's operator sets it with {cls.flag(name)} or {cls.variable(name)}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
        """One argument per limit, its default read from its environment variable, else the built-in default."""
        group = parser.add_argument_group("limits (docs/app.md 'Limits'; each also an environment variable)")
        for limit in fields(cls):
            variable = cls.variable(limit.name)
            group.add_argument(
                cls.flag(limit.name),
                dest=limit.name,
                type=_positive_integer(cls.flag(limit.name), variable),
                # A string default goes through `type` too: a bad environment value is named like a bad argument.
                default=environ.get(variable, str(limit.default)),
                metavar="N",
                help=f"{limit.metadata['unit']} (default {limit.default}; ${variable}): {limit.metadata['why']}",
            )

    @classmethod
    def from_arguments(cls, arguments: argparse.Namespace) -> AppLimits:
        return cls(**{limit.name: getattr(arguments, limit.name) for limit in fields(cls)})


def _positive_integer(flag: str, variable: str):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"expected a positive whole number ({flag} or ${variable}), got {value!r}")
        return number

    return parse

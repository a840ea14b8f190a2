"""The one exception tinytlc raises for bad input: the CLI prints its message on one line, and the
checks the Python API makes of its arguments (argparse makes them for the CLI)."""

import numbers
import os


class TinyTLError(Exception):
    """A problem with what the user gave us (file, model, data, option), stated in one line."""


def check_int(flag: str, value, low: int, high: int | None = None, optional: bool = False) -> None:
    """An integer argument (a bool is not one) within [low, high], said as the CLI says it for FLAG."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TinyTLError(f"{flag} {value!r} is not an integer")
    if value < low or (high is not None and value > high):
        raise TinyTLError(f"{flag} {value} is out of range (must be >= {low}"
                          f"{f' and <= {high}' if high is not None else ''})")


def check_path(name: str, value) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise TinyTLError(f"{name}: expected a path (str or Path), got {type(value).__name__}")

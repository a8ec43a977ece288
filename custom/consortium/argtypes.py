"""argparse types shared by the commands: a bad flag value is refused when the command line is parsed."""

from __future__ import annotations


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(text)
    return value

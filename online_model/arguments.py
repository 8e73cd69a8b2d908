"""Argument types shared by the command-line tools, for argparse's ``type=``.

Each returns the parsed value or raises ``argparse.ArgumentTypeError`` with
the value and what was expected, so argparse prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    """Parse a whole number, 0 or more."""
    return _whole_number(text, lowest=0)


def positive_int(text: str) -> int:
    """Parse a whole number, 1 or more."""
    return _whole_number(text, lowest=1)


def non_negative_number(text: str) -> float:
    """Parse a finite number, 0 or more."""
    return _finite_number(text, above_zero=False, unit="")


def fraction(text: str) -> float:
    """Parse a share from 0 to 1."""
    value = _finite_number(text, above_zero=False, unit="")
    if value > 1:
        raise argparse.ArgumentTypeError(f"invalid fraction {text!r}: expected 0 to 1")
    return value


def non_negative_seconds(text: str) -> float:
    """Parse a finite number of seconds, 0 or more."""
    return _finite_number(text, above_zero=False, unit=" of seconds")


def positive_seconds(text: str) -> float:
    """Parse a finite number of seconds above 0."""
    return _finite_number(text, above_zero=True, unit=" of seconds")


def _whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected {lowest} or more"
        )
    return value


def _finite_number(text: str, above_zero: bool, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    high_enough = value > 0 if above_zero else value >= 0
    if not (high_enough and value < math.inf):
        expected = "above 0" if above_zero else "0 or more"
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a finite number{unit}, {expected}"
        )
    return value


def device_argument(text: str) -> str:
    """Check a --device value against the devices torch can use here."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(
            f"invalid device {text!r}: expected cpu, cuda or cuda:N"
        )
    if device.type == "cpu":
        return text
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"device {text!r}: no CUDA device is available; use --device cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(
            f"device {text!r} not found: this machine has {count} CUDA devices "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return text

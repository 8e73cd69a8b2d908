"""Argument types shared by the command-line tools, for argparse's ``type=``.

Each returns the parsed value or raises ``argparse.ArgumentTypeError`` with
the value and what was expected, so argparse prints one line and exits 2.
"""

from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    """Parse a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected 0 or more")
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

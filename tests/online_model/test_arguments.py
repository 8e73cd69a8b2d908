from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from online_model.arguments import (
    non_negative_int,
    non_negative_number,
    non_negative_seconds,
    positive_int,
    positive_seconds,
)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (non_negative_int, "0", 0),
        (positive_int, "7", 7),
        (non_negative_number, "0", 0.0),
        (non_negative_number, "2.5", 2.5),
        (non_negative_seconds, "0", 0.0),
        (positive_seconds, "0.05", 0.05),
    ],
)
def test_parsers_accept_valid_values(
    parse: Callable[[str], float], text: str, expected: float
) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (non_negative_int, "-1", "invalid value '-1': expected 0 or more"),
        (non_negative_int, "1.5", "invalid integer '1.5'"),
        (positive_int, "0", "invalid value '0': expected 1 or more"),
        (non_negative_number, "x", "invalid number 'x'"),
        (
            non_negative_number,
            "inf",
            "invalid value 'inf': expected a finite number, 0 or more",
        ),
        (
            non_negative_seconds,
            "nan",
            "invalid value 'nan': expected a finite number of seconds, 0 or more",
        ),
        (
            positive_seconds,
            "0",
            "invalid value '0': expected a finite number of seconds, above 0",
        ),
    ],
)
def test_parsers_reject_invalid_values(
    parse: Callable[[str], float], text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as error:
        parse(text)
    assert str(error.value) == message

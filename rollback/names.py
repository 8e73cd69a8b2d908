"""Version names: ``12``, ``v12`` and ``V012`` all name version 12."""

from __future__ import annotations

import re

from rollback.errors import InvalidVersionName

# The largest version number, for names and for the publisher alike: nine
# digits keep a name far from integer overflow in any tool and far above any
# count of versions a registry will hold.
MAX_VERSION = 999_999_999
# Leading zeros are allowed (v0000000003), up to this many characters.
MAX_NAME_LENGTH = 32
_VERSION_NAME = re.compile(r"[vV]?([0-9]+)")


def parse_version(name: str | int) -> int:
    """Return the version number that ``name`` denotes.

    Accepts an int from 1 to MAX_VERSION or a string ``N``, ``vN`` or ``VN``
    (leading zeros allowed, at most MAX_NAME_LENGTH characters). Raises
    InvalidVersionName for anything else, before any store is touched.
    """
    if isinstance(name, bool) or not isinstance(name, int | str):
        raise InvalidVersionName(f"invalid version {name!r}: expected vN, N >= 1")
    if isinstance(name, int):
        number = name
    else:
        match = _VERSION_NAME.fullmatch(name.strip())
        if match is None or len(name.strip()) > MAX_NAME_LENGTH:
            raise InvalidVersionName(
                f"invalid version {name!r}: expected N, vN or VN with N a number "
                f"from 1 to {MAX_VERSION}, such as v12"
            )
        number = int(match.group(1))
    if number < 1:
        raise InvalidVersionName(
            f"invalid version {name!r}: version numbers start at 1"
        )
    if number > MAX_VERSION:
        raise InvalidVersionName(
            f"invalid version {name!r}: the largest version number is {MAX_VERSION}"
        )
    return number


def format_version(number: int) -> str:
    """Return the display name of a version number (``v12``)."""
    return f"v{number}"

"""Version names: ``12``, ``v12`` and ``V012`` all name version 12."""

from __future__ import annotations

import re

from rollback.errors import InvalidVersionName

# Nine digits at most keeps a name far from integer overflow in any tool and
# far above any count of versions a registry will hold.
_VERSION_NAME = re.compile(r"[vV]?([0-9]{1,9})")


def parse_version(name: str | int) -> int:
    """Return the version number that ``name`` denotes.

    Accepts an int >= 1 or a string ``N``, ``vN`` or ``VN`` (leading zeros
    allowed). Raises InvalidVersionName for anything else, before any store
    is touched.
    """
    if isinstance(name, bool):
        raise InvalidVersionName(f"invalid version {name!r}: expected vN, N >= 1")
    if isinstance(name, int):
        number = name
    else:
        match = _VERSION_NAME.fullmatch(name.strip())
        if match is None:
            raise InvalidVersionName(
                f"invalid version {name!r}: expected N, vN or VN with N a number "
                "from 1, such as v12"
            )
        number = int(match.group(1))
    if number < 1:
        raise InvalidVersionName(
            f"invalid version {name!r}: version numbers start at 1"
        )
    return number


def format_version(number: int) -> str:
    """Return the display name of a version number (``v12``)."""
    return f"v{number}"

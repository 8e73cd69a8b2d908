"""``--filter`` expressions for ``streamlearn versions list``.

In the manner of ``gcloud --filter``: terms ``KEY OP VALUE`` joined by
``AND`` (or plain spaces), ``OR`` and ``NOT``, with parentheses. Keys are the
dotted field paths of ``--format json`` (``version``, ``status``,
``metrics.holdout.accuracy``, ``events.count``, ``code_version``). Operators:
``= != < <= > >=`` compare numbers when both sides are numbers and text
otherwise; ``:`` is a case-insensitive substring match; ``~`` a regular
expression search. Values with spaces or ``: ( )`` go in quotes. ``vN``
compares as the number N, so ``version>=v10`` works, and two dates or
times in ISO 8601 (``2026-12-05``, ``2026-12-05 08:00``, with or without a
zone, UTC when none) compare as times. ``KEY=none`` (or
``null``) matches a null or missing value and ``KEY!=none`` any other. OR
binds more loosely than AND, as in gcloud.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollback.errors import InvalidInput

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", ":", "~")
_TOKEN = re.compile(
    r"""\s*(?:(?P<paren>[()])|(?P<op><=|>=|!=|=|<|>|:|~)"""
    r"""|(?P<quoted>"[^"]*"|'[^']*')|(?P<word>[^\s()<>=!:~"']+))"""
)
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_VERSION = re.compile(r"[vV]([0-9]+)")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class Filter:
    """A compiled filter: ``matches(row)`` and the keys it reads."""

    expression: str
    keys: frozenset[str]
    matches: Predicate


def compile_filter(expression: str) -> Filter:
    """Parse ``expression``; raises InvalidInput naming the bad part."""
    tokens = _tokenize(expression)
    parser = _Parser(expression, tokens)
    predicate = parser.parse()
    return Filter(expression, frozenset(parser.keys), predicate)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested mappings as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise InvalidInput(
                f"invalid filter {expression!r}: unexpected text at {text[position:]!r}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "quoted":
            kind, value = "word", value[1:-1]
        elif kind == "word" and value in ("AND", "OR", "NOT"):
            kind = value
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, expression: str, tokens: list[tuple[str, str]]) -> None:
        self.expression = expression
        self.tokens = tokens
        self.position = 0
        self.keys: set[str] = set()

    def parse(self) -> Predicate:
        if not self.tokens:
            raise self._error("it is empty")
        predicate = self._or()
        if self.position < len(self.tokens):
            raise self._error(f"unexpected {self.tokens[self.position][1]!r}")
        return predicate

    def _peek(self) -> str | None:
        if self.position < len(self.tokens):
            return self.tokens[self.position][0]
        return None

    def _take(self, kind: str) -> str:
        if self._peek() != kind:
            found = (
                "the end"
                if self._peek() is None
                else repr(self.tokens[self.position][1])
            )
            raise self._error(f"expected {kind} but found {found}")
        value = self.tokens[self.position][1]
        self.position += 1
        return value

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek() == "OR":
            self.position += 1
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(part(row) for part in parts)

    def _and(self) -> Predicate:
        parts = [self._not()]
        while self._peek() in ("AND", "NOT", "word", "paren") and not self._closing():
            if self._peek() == "AND":
                self.position += 1
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(part(row) for part in parts)

    def _closing(self) -> bool:
        return self._peek() == "paren" and self.tokens[self.position][1] == ")"

    def _not(self) -> Predicate:
        if self._peek() == "NOT":
            self.position += 1
            inner = self._not()
            return lambda row: not inner(row)
        if self._peek() == "paren":
            if self._take("paren") != "(":
                raise self._error("unexpected ')'")
            inner = self._or()
            if self._take("paren") != ")":
                raise self._error("missing ')'")
            return inner
        return self._term()

    def _term(self) -> Predicate:
        key = self._take("word")
        if self._peek() != "op":
            raise self._error(
                f"expected an operator after {key!r}, one of {' '.join(OPERATORS)}"
            )
        op = self._take("op")
        value = self._take("word")
        self.keys.add(key)
        return _comparison(self.expression, key, op, value)

    def _error(self, problem: str) -> InvalidInput:
        return InvalidInput(
            f"invalid filter {self.expression!r}: {problem}; write terms as KEY OP "
            "VALUE, such as 'metrics.holdout.top1_accuracy>=0.9 AND status=serving', "
            "and quote a value with spaces, a colon or parentheses, such as "
            "created_at>'2026-12-01T08:00'"
        )


def _comparison(expression: str, key: str, op: str, value: str) -> Predicate:
    if op == "~":
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise InvalidInput(
                f"invalid filter {expression!r}: bad regular expression "
                f"{value!r} ({error})"
            ) from error
        return lambda row: key in row and pattern.search(str(row[key])) is not None
    if op == ":":
        needle = value.lower()
        return lambda row: key in row and needle in str(row[key]).lower()

    compare = _ORDERING[op]
    number = _as_number(value)
    moment = _as_time(value)

    wants_null = value.lower() in ("none", "null")

    def predicate(row: Row) -> bool:
        if key not in row or row[key] is None:
            # A missing or null value equals none and null, and nothing else.
            if op == "=":
                return wants_null
            return op == "!=" and not wants_null
        actual = row[key]
        actual_number = _as_number(actual)
        if number is not None and actual_number is not None:
            return compare(actual_number, number)
        actual_moment = _as_time(actual)
        if moment is not None and actual_moment is not None:
            return compare(actual_moment, moment)
        return compare(str(actual).lower(), value.lower())

    return predicate


def _as_time(value: Any) -> datetime | None:
    """Return an ISO 8601 date or time as an aware datetime (UTC when it
    names no zone), or None for other values."""
    if not isinstance(value, str) or not _DATE.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        version = _VERSION.fullmatch(value)
        if version:
            return float(version.group(1))
        try:
            return float(value)
        except ValueError:
            return None
    return None

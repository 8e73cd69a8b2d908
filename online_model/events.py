"""Checks of incoming events against a feature spec, and what each problem means.

Every problem has a reason code. Some reject the event (it is counted and
reported, never learned from or scored); the rest are notes on an event that
is still used:

========================  ========  =================================================
reason                    rejects   behaviour
========================  ========  =================================================
``not_a_record``          yes       the event is not a dict
``missing_field``         yes       a schema field is absent from the dict
``null_value``            yes       null in a field the schema does not make nullable
``wrong_type``            yes       a value of the wrong Python type for its Avro type
``non_finite_number``     yes       NaN or an infinite number
``unknown_category``      yes       a symbol outside an Avro enum
``invalid_label``         yes       a label string that is empty, only spaces, or
                                    has a character that does not print
``invalid_event_id``      yes       an event id string that is empty, only spaces or
                                    over 1,024 bytes in UTF-8
``duplicate_event_id``    yes       an event id seen earlier in the same micro-batch
``empty_list``            no        an empty multi-valued field, learned as "no values"
``no_label``              no        a prediction request: scored, never learned from
``unknown_label``         no        a label the model has not seen: the output grows
========================  ========  =================================================

A categorical value the model has never seen is not a problem: it hashes to a
feature of its own, so it needs no restart. The learner counts such first
sightings per micro-batch.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from online_model.spec import AvroField, FeatureSpec

logger = logging.getLogger(__name__)

NOT_A_RECORD = "not_a_record"
MISSING_FIELD = "missing_field"
NULL_VALUE = "null_value"
WRONG_TYPE = "wrong_type"
NON_FINITE_NUMBER = "non_finite_number"
UNKNOWN_CATEGORY = "unknown_category"
INVALID_LABEL = "invalid_label"
INVALID_EVENT_ID = "invalid_event_id"
# Event ids travel as a Pub/Sub attribute of each prediction, and attribute
# values may not exceed 1,024 bytes.
MAX_EVENT_ID_BYTES = 1024
DUPLICATE_EVENT_ID = "duplicate_event_id"
EMPTY_LIST = "empty_list"
NO_LABEL = "no_label"
UNKNOWN_LABEL = "unknown_label"

REJECTING_REASONS: frozenset[str] = frozenset(
    {
        NOT_A_RECORD,
        MISSING_FIELD,
        NULL_VALUE,
        WRONG_TYPE,
        NON_FINITE_NUMBER,
        UNKNOWN_CATEGORY,
        INVALID_LABEL,
        INVALID_EVENT_ID,
        DUPLICATE_EVENT_ID,
    }
)

# Python types fastavro decodes each Avro type to (and accepts when writing).
# The values Avro's int and long can carry.
_INTEGER_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_FLOAT_MAX = sys.float_info.max
# An event time given as an int is milliseconds since the Unix epoch, and must
# be a time a datetime can carry: 0001-01-01 to 9999-12-31, UTC.
_TIME_MILLIS_RANGE = (-62_135_596_800_000, 253_402_300_799_999)
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "enum": (str,),
    "boolean": (bool,),
    "int": (int,),
    "long": (int, datetime),
    "float": (float, int),
    "double": (float, int),
    "array": (list, tuple),
}


@dataclass(frozen=True, slots=True)
class EventProblem:
    """One problem with one event: a reason code, the field involved and details."""

    reason: str
    field: str | None
    detail: str

    @property
    def rejects(self) -> bool:
        """Whether this problem keeps the event from being scored or learned."""
        return self.reason in REJECTING_REASONS


def check_event(
    event: Any, spec: FeatureSpec, labels: Collection[str] | None = None
) -> list[EventProblem]:
    """Return the problems of one event; an empty list means a clean labelled event.

    Checks every field of the spec's Avro schema. With ``labels`` (the
    model's label vocabulary) a label outside it is noted as
    ``unknown_label``.
    """
    if not isinstance(event, dict):
        return [
            EventProblem(
                NOT_A_RECORD, None, f"expected a dict, got {type(event).__name__}"
            )
        ]
    problems: list[EventProblem] = []
    for avro_field in spec.avro_fields.values():
        problem = _check_field(event, avro_field, spec)
        if problem is not None:
            problems.append(problem)
    label = event.get(spec.label_field)
    if labels is not None and isinstance(label, str) and label and label not in labels:
        problems.append(
            EventProblem(
                UNKNOWN_LABEL, spec.label_field, f"label {label!r} is new to the model"
            )
        )
    return problems


CLEAN = 0
UNLABELLED = 1
NEEDS_CHECK = 2

_ABSENT = object()
_NONE_TYPE = type(None)
# Number of combinations of field types whose value tests EventScreen caches.
MAX_TYPE_COMBINATIONS = 1024


class EventScreen:
    """A fast pre-check that passes the common, clean events without building problems.

    :meth:`screen` returns ``CLEAN`` (a labelled event that nothing
    rejects), ``UNLABELLED`` (a prediction request that nothing rejects) or
    ``NEEDS_CHECK``, after which :func:`check_event` gives the details. An
    empty list passes as clean, because its ``empty_list`` note changes
    nothing in how the event is used.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self._label_field = spec.label_field
        self._rules: list[_FieldRule] = []
        for avro_field in spec.avro_fields.values():
            base = avro_field.base_type
            exact_types = frozenset(_PYTHON_TYPES.get(base, (object,)))
            if base == "boolean":
                exact_types = frozenset({bool})
            check = _BASE_TESTS.get(base, _NO_TEST)
            if base in _INTEGER_RANGES:
                check = _LONG_RANGE if base == "long" else _INT_RANGE
            if avro_field.name == spec.event_time_field and base == "long":
                check = _TIME_RANGE
            if avro_field.name == spec.event_id_field and base == "string":
                check = _EVENT_ID
            if base not in _PYTHON_TYPES or (
                base == "array" and avro_field.items != "string"
            ):
                check = _UNSUPPORTED
            symbols = frozenset(_enum_symbols(spec, avro_field.name))
            nullable = avro_field.nullable
            self._rules.append(
                _FieldRule(avro_field.name, exact_types, nullable, check, symbols)
            )
        names = [rule.name for rule in self._rules]
        # Reads every schema field of an event as a tuple, in one call.
        self._row_getter = _tuple_getter(names)
        self._label_position = (
            names.index(self._label_field) if self._label_field in names else None
        )
        # The value tests that follow the type tests, by the types of an
        # event's schema fields.
        self._value_tests: dict[
            tuple[type, ...], tuple[tuple[int, Callable[[Any], bool]], ...]
        ] = {}

    def screen(self, event: Any) -> int:
        """Return CLEAN, UNLABELLED or NEEDS_CHECK for one event."""
        if type(event) is not dict:
            return NEEDS_CHECK
        try:
            row = self._row_getter(event)
        except KeyError:  # a schema field is missing
            return NEEDS_CHECK
        types = tuple(map(type, row))
        value_tests = self._value_tests.get(types)
        if value_tests is None:
            value_tests = self._plan_value_tests(types)
            if value_tests is None:
                return NEEDS_CHECK
        for position, passes in value_tests:
            if not passes(row[position]):
                return NEEDS_CHECK
        label = event[self._label_field]
        if label is None:
            return UNLABELLED
        return CLEAN if _is_label(label) else NEEDS_CHECK

    def _plan_value_tests(
        self, types: tuple[type, ...]
    ) -> tuple[tuple[int, Callable[[Any], bool]], ...] | None:
        """Return the value tests left for events whose fields have these types.

        Returns None when the types alone fail. The types settle every type
        and null check, so :meth:`screen` caches the result per combination.
        """
        tests: list[tuple[int, Callable[[Any], bool]]] = []
        for position, (rule, value_type) in enumerate(
            zip(self._rules, types, strict=True)
        ):
            if value_type is _NONE_TYPE:
                if not rule.nullable:
                    return None
            elif value_type not in rule.exact_types or rule.check == _UNSUPPORTED:
                return None
            elif rule.check != _NO_TEST:
                tests.append((position, rule.value_test()))
        value_tests = tuple(tests)
        # The limit bounds the memory that input with many odd types can take.
        if len(self._value_tests) < MAX_TYPE_COMBINATIONS:
            self._value_tests[types] = value_tests
        return value_tests

    def screen_batch(self, events: Sequence[Any]) -> list[int]:
        """Return :meth:`screen` of every event, checking one field at a time.

        Each field's values are checked together for the whole batch, and
        only a field that fails that bulk check is checked event by event, so
        a batch of clean events costs a few passes over lists.
        """
        records = [event for event in events if type(event) is dict]
        if len(records) == len(events):
            return self._screen_records(records)
        statuses = iter(self._screen_records(records))
        return [next(statuses) if type(e) is dict else NEEDS_CHECK for e in events]

    def _screen_records(self, events: list[dict[str, Any]]) -> list[int]:
        failed: set[int] = set()
        columns = self._columns(events)
        for rule, column in zip(self._rules, columns, strict=True):
            if not rule.column_passes(column):
                failed.update(
                    i for i, value in enumerate(column) if not rule.passes(value)
                )
        if self._label_position is None:
            label_field = self._label_field
            return [
                NEEDS_CHECK if i in failed else _label_status(event[label_field])
                for i, event in enumerate(events)
            ]
        labels = columns[self._label_position]
        if not failed and None not in labels and all(map(_is_label, labels)):
            return [CLEAN] * len(events)
        return [
            NEEDS_CHECK if i in failed else _label_status(label)
            for i, label in enumerate(labels)
        ]

    def _columns(self, events: list[dict[str, Any]]) -> list[Sequence[Any]]:
        """Return the values of every schema field, one column per field.

        A missing field's value is the ``_ABSENT`` marker.
        """
        try:
            rows = list(map(self._row_getter, events))
        except KeyError:
            return [
                [event.get(rule.name, _ABSENT) for event in events]
                for rule in self._rules
            ]
        if not rows:
            return [() for _ in self._rules]
        return list(zip(*rows, strict=True))


def _label_status(label: Any) -> int:
    if label is None:
        return UNLABELLED
    return CLEAN if _is_label(label) else NEEDS_CHECK


def _is_label(label: Any) -> bool:
    """Return whether a label that is not None may be learned (a value of the
    wrong type fails elsewhere).

    A label must contain a character other than a space, and only characters
    that print: a control character, a zero-width space or a no-break space
    would make labels that look the same but are not.
    """
    return not isinstance(label, str) or (
        label.isprintable() and label.strip(" ") != ""
    )


# The test that a _FieldRule runs on a value after its type passed. Plain
# integers, because the screen compares them for every field of a batch.
_NO_TEST = 0
_FINITE = 1  # a finite number
_STRING_LIST = 2  # a list of strings
_ENUM_SYMBOL = 3  # one of the enum's symbols
_UNSUPPORTED = 4  # always fails: a type the screen leaves to check_event
_LONG_RANGE = 5  # an integer in the range of Avro's long
_INT_RANGE = 6  # an integer in the range of Avro's int
_TIME_RANGE = 7  # an event time in milliseconds that a datetime can carry
_EVENT_ID = 8  # an id that is not empty or only spaces, within MAX_EVENT_ID_BYTES
_BASE_TESTS = {
    "float": _FINITE,
    "double": _FINITE,
    "array": _STRING_LIST,
    "enum": _ENUM_SYMBOL,
}


class _FieldRule(NamedTuple):
    """The requirements :class:`EventScreen` places on one field's value.

    ``check`` is the test after the type test, one of the constants above.
    """

    name: str
    exact_types: frozenset[type]
    nullable: bool
    check: int
    symbols: frozenset[str]

    def passes(self, value: Any) -> bool:
        """Return whether one value passes, as :meth:`EventScreen.screen` decides."""
        if value is None:
            return self.nullable
        if type(value) not in self.exact_types or self.check == _UNSUPPORTED:
            return False
        return self.check == _NO_TEST or self.value_test()(value)

    def value_test(self) -> Callable[[Any], bool]:
        """Return the test of a value whose type passed (checks 1-3 and 5-8)."""
        if self.check == _FINITE:
            return _is_finite
        if self.check == _STRING_LIST:
            return _is_string_list
        if self.check == _LONG_RANGE:
            return _in_long_range
        if self.check == _INT_RANGE:
            return _in_int_range
        if self.check == _TIME_RANGE:
            return _in_time_range
        if self.check == _EVENT_ID:
            return _is_id
        return self.symbols.__contains__

    def column_passes(self, column: Sequence[Any]) -> bool:
        """Return whether every value of a column passes, checked in bulk.

        A False can be a false alarm, after which :meth:`passes` decides value
        by value, but a True is always right.
        """
        types = set(map(type, column))
        values = column
        if _NONE_TYPE in types:
            if not self.nullable:
                return False
            types.discard(_NONE_TYPE)
            values = [value for value in column if value is not None]
        if not types <= self.exact_types:
            return False
        if self.check == _FINITE:
            # A sum is finite only if every term is, because NaN and
            # infinities propagate. A finite sum that overflows is a false
            # alarm, and so is an int too large for a float beside a float.
            integers = [value for value in values if type(value) is int]
            if integers and not (
                min(integers) >= -_FLOAT_MAX and max(integers) <= _FLOAT_MAX
            ):
                return False
            try:
                total = sum(values)
            except OverflowError:
                return False
            return bool(total - total == 0)
        if self.check == _STRING_LIST:
            try:
                "".join(itertools.chain.from_iterable(values))
            except TypeError:
                return False
            return True
        if self.check == _ENUM_SYMBOL:
            return set(values) <= self.symbols
        if self.check == _UNSUPPORTED:
            return not values
        if self.check == _EVENT_ID:
            return all(map(_is_id, values))
        if self.check in (_LONG_RANGE, _INT_RANGE, _TIME_RANGE):
            integers = [value for value in values if type(value) is int]
            low, high = (
                _TIME_MILLIS_RANGE
                if self.check == _TIME_RANGE
                else _INTEGER_RANGES["long" if self.check == _LONG_RANGE else "int"]
            )
            return not integers or (low <= min(integers) and max(integers) <= high)
        return True


def _is_id(text: str) -> bool:
    if text == "" or text.isspace():
        return False
    # A character takes at most 4 bytes in UTF-8, so short ids need no encoding.
    return len(text) * 4 <= MAX_EVENT_ID_BYTES or (
        len(text.encode("utf-8", "surrogatepass")) <= MAX_EVENT_ID_BYTES
    )


def _is_finite(number: float) -> bool:
    if type(number) is int:
        return -_FLOAT_MAX <= number <= _FLOAT_MAX
    return bool(number - number == 0)  # false for NaN and infinities


def _in_long_range(number: Any) -> bool:
    low, high = _INTEGER_RANGES["long"]
    return type(number) is not int or low <= number <= high


def _in_time_range(number: Any) -> bool:
    low, high = _TIME_MILLIS_RANGE
    return type(number) is not int or low <= number <= high


def _in_int_range(number: Any) -> bool:
    low, high = _INTEGER_RANGES["int"]
    return type(number) is not int or low <= number <= high


def _is_string_list(values: list[Any] | tuple[Any, ...]) -> bool:
    try:
        "".join(values)  # raises TypeError unless every item is a str
    except TypeError:
        return False
    return True


def _tuple_getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """Return a function that reads the named keys of a dict as a tuple."""
    if len(names) == 1:
        name = names[0]
        return lambda record: (record[name],)
    return operator.itemgetter(*names)


def _enum_symbols(spec: FeatureSpec, name: str) -> list[str]:
    for entry in spec.schema.get("fields", []):
        if entry["name"] != name:
            continue
        avro_type = entry["type"]
        for branch in avro_type if isinstance(avro_type, list) else [avro_type]:
            if isinstance(branch, dict) and branch.get("type") == "enum":
                return list(branch.get("symbols", []))
    return []


def rejecting(problems: list[EventProblem]) -> EventProblem | None:
    """Return the first problem that rejects the event, or None."""
    for problem in problems:
        if problem.rejects:
            return problem
    return None


def _check_field(
    event: dict[str, Any], avro_field: AvroField, spec: FeatureSpec
) -> EventProblem | None:
    name = avro_field.name
    if name not in event:
        return EventProblem(MISSING_FIELD, name, f"field {name!r} is absent")
    value = event[name]
    if value is None:
        if name == spec.label_field and avro_field.nullable:
            return EventProblem(NO_LABEL, name, "no label: a prediction request")
        if avro_field.nullable:
            return None
        return EventProblem(
            NULL_VALUE,
            name,
            f"field {name!r} is null, but its Avro "
            f"type {avro_field.base_type!r} is not nullable",
        )

    allowed = _PYTHON_TYPES.get(avro_field.base_type)
    wrong_bool = isinstance(value, bool) and avro_field.base_type != "boolean"
    if allowed is not None and (wrong_bool or not isinstance(value, allowed)):
        return EventProblem(
            WRONG_TYPE,
            name,
            f"field {name!r} is "
            f"{type(value).__name__} {_short(value)}; Avro type "
            f"{avro_field.base_type!r} needs "
            f"{' or '.join(t.__name__ for t in allowed)}",
        )
    if isinstance(value, float) and not math.isfinite(value):
        return EventProblem(NON_FINITE_NUMBER, name, f"field {name!r} is {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        problem = _check_integer_range(name, value, avro_field.base_type)
        if problem is not None:
            return problem
        low, high = _TIME_MILLIS_RANGE
        if name == spec.event_time_field and not low <= value <= high:
            return EventProblem(
                WRONG_TYPE,
                name,
                f"field {name!r} is int {_short(value)} milliseconds, outside "
                "the times a timestamp can carry (years 1 to 9999, UTC)",
            )
    if avro_field.base_type == "enum":
        return _check_enum(name, value, spec)
    if avro_field.base_type == "array":
        return _check_array(name, value, avro_field)
    if name == spec.label_field and isinstance(value, str) and not _is_label(value):
        return EventProblem(
            INVALID_LABEL,
            name,
            f"the label {value!r} is empty, only spaces, or contains a character "
            "that does not print (a control, format or non-ASCII space character)",
        )
    if name == spec.event_id_field and isinstance(value, str) and not _is_id(value):
        return EventProblem(
            INVALID_EVENT_ID,
            name,
            f"the event id {_short(value)} is empty, only spaces or over "
            f"{MAX_EVENT_ID_BYTES} bytes in UTF-8",
        )
    return None


def _check_integer_range(name: str, value: int, base_type: str) -> EventProblem | None:
    if base_type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[base_type]
        if not low <= value <= high:
            return EventProblem(
                WRONG_TYPE,
                name,
                f"field {name!r} is int {_short(value)}, outside the range of "
                f"Avro type {base_type!r} ({low} to {high})",
            )
    elif not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        return EventProblem(
            NON_FINITE_NUMBER,
            name,
            f"field {name!r} is int {_short(value)}, too large for Avro type "
            f"{base_type!r}",
        )
    return None


def _check_array(
    name: str, value: list[Any] | tuple[Any, ...], avro_field: AvroField
) -> EventProblem | None:
    if not value:
        return EventProblem(EMPTY_LIST, name, f"field {name!r} is an empty list")
    item_types = _PYTHON_TYPES.get(avro_field.items or "")
    if item_types is None:
        return None
    for item in value:
        if not isinstance(item, item_types) or isinstance(item, bool):
            return EventProblem(
                WRONG_TYPE,
                name,
                f"field {name!r} holds "
                f"{type(item).__name__} {_short(item)}; items must "
                f"be {avro_field.items}",
            )
    return None


def _check_enum(name: str, value: str, spec: FeatureSpec) -> EventProblem | None:
    for entry in spec.schema.get("fields", []):
        if entry["name"] != name:
            continue
        avro_type = entry["type"]
        branches = avro_type if isinstance(avro_type, list) else [avro_type]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "enum":
                symbols = branch.get("symbols", [])
                if value not in symbols:
                    return EventProblem(
                        UNKNOWN_CATEGORY,
                        name,
                        f"field {name!r} is {value!r}; the enum "
                        f"allows {', '.join(symbols)}",
                    )
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

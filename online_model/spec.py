"""Feature specs: which event fields the model reads, and how.

A feature spec is configuration (TOML under ``online_model/specs/``), not
code. It names the Avro schema of the events, the event id, event time and
label fields, and for each feature field its kind:

- ``categorical``: one string, boolean, integer or enum value per event.
- ``multi_valued``: an array of strings (a bag of values, e.g. skills).
- ``numeric``: an int, long, float or double, standardized with running
  statistics and optionally cut into buckets.
- ``text``: a string split into lower-case word tokens.

``crosses`` list groups of fields whose values are combined into one hashed
feature per combination. :func:`load_spec` checks every name and kind against
the Avro schema, so a typo fails at start-up and not on the first event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fastavro

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schemas"
SPEC_DIR = Path(__file__).parent / "specs"

FieldKind = Literal["categorical", "multi_valued", "numeric", "text"]
FIELD_KINDS: tuple[str, ...] = ("categorical", "multi_valued", "numeric", "text")
NUMERIC_TRANSFORMS: tuple[str, ...] = ("none", "log1p")

# Avro base types of numbers (after removing "null" from a union).
NUMERIC_AVRO_TYPES: tuple[str, ...] = ("int", "long", "float", "double")

# Avro base types each kind accepts (after removing "null" from a union).
_KIND_AVRO_TYPES: dict[str, tuple[str, ...]] = {
    "categorical": ("string", "boolean", "int", "long", "enum"),
    "multi_valued": ("array",),
    "numeric": NUMERIC_AVRO_TYPES,
    "text": ("string",),
}


class SpecError(ValueError):
    """A feature spec or Avro schema that cannot be used."""


@dataclass(frozen=True)
class AvroField:
    """One top-level field of an Avro record, reduced to what featurizing needs.

    ``base_type`` is the Avro type name once ``null`` is taken out of a union
    (``array``, ``enum``, ``string``, ``double``, ...). ``items`` is the item
    type of an array.
    """

    name: str
    base_type: str
    nullable: bool
    items: str | None = None
    logical_type: str | None = None


@dataclass(frozen=True)
class FieldSpec:
    """How one event field becomes model input.

    ``buckets`` (numeric only) cuts the standardized value into that many
    equal-probability buckets under a normal distribution and emits the
    bucket as a hashed feature; 0 turns buckets off. ``value_token`` (numeric
    only) also emits the exact value as a hashed feature, which lets the
    model memorize repeated values such as a salary figure. ``weight`` scales
    the hashed features of this field.
    """

    name: str
    kind: FieldKind
    transform: str = "none"
    buckets: int = 0
    value_token: bool = False
    weight: float = 1.0


@dataclass(frozen=True)
class CrossSpec:
    """A feature cross: one hashed feature per combination of field values.

    At most one field of a cross may be multi-valued or text. Numeric fields
    take part through their bucket, or through their exact value when
    ``exact`` is set (which needs ``value_token`` on those fields).
    """

    fields: tuple[str, ...]
    exact: bool = False

    @property
    def name(self) -> str:
        """The cross's name, the field names joined with ``x``."""
        return "x".join(self.fields)


@dataclass(frozen=True)
class FeatureSpec:
    """A validated feature spec together with the Avro schema it reads."""

    name: str
    schema: Mapping[str, Any]
    event_id_field: str
    event_time_field: str
    label_field: str
    fields: tuple[FieldSpec, ...]
    crosses: tuple[CrossSpec, ...] = ()
    avro_fields: Mapping[str, AvroField] = field(default_factory=dict)

    def field(self, name: str) -> FieldSpec:
        """Return the spec of the feature field ``name``."""
        for field_spec in self.fields:
            if field_spec.name == name:
                return field_spec
        known = ", ".join(f.name for f in self.fields)
        raise KeyError(
            f"feature spec {self.name!r} has no field {name!r}; fields are: {known}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-compatible data (schema included)."""
        return {
            "name": self.name,
            "schema": dict(self.schema),
            "event_id": self.event_id_field,
            "event_time": self.event_time_field,
            "label": self.label_field,
            # A list, not a table, because field order fixes the model's input
            # layout and JSON writers may sort keys.
            "fields": [{"name": f.name, **_field_options(f)} for f in self.fields],
            "crosses": [
                {"fields": list(c.fields), "exact": c.exact} for c in self.crosses
            ],
        }


def _field_options(field_spec: FieldSpec) -> dict[str, Any]:
    options: dict[str, Any] = {"kind": field_spec.kind, "weight": field_spec.weight}
    if field_spec.kind == "numeric":
        options.update(
            transform=field_spec.transform,
            buckets=field_spec.buckets,
            value_token=field_spec.value_token,
        )
    return options


def load_schema(name_or_path: str | Path) -> dict[str, Any]:
    """Load and check an Avro record schema by name (``schemas/NAME.avsc``) or path."""
    path = _resolve(name_or_path, SCHEMA_DIR, ".avsc", "Avro schema")
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SpecError(
            f"Avro schema {str(path)!r} is not valid JSON: {error}"
        ) from None
    try:
        fastavro.parse_schema(schema)
    except Exception as error:  # fastavro raises several exception types
        raise SpecError(f"Avro schema {str(path)!r} is invalid: {error}") from None
    if schema.get("type") != "record":
        raise SpecError(
            f"Avro schema {str(path)!r} has type {schema.get('type')!r}; "
            "an event schema must be a 'record'"
        )
    return schema


def load_spec(name_or_path: str | Path) -> FeatureSpec:
    """Load a feature spec by name (``specs/NAME.toml``) or path, and validate it.

    The spec's ``schema`` key names the Avro schema: a name under
    ``online_model/schemas/`` or a path relative to the spec file.
    """
    path = _resolve(name_or_path, SPEC_DIR, ".toml", "feature spec")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SpecError(
            f"feature spec {str(path)!r} is not valid TOML: {error}"
        ) from None
    schema_ref = raw.get("schema")
    if not isinstance(schema_ref, str):
        raise SpecError(
            f"feature spec {str(path)!r}: 'schema' must name an Avro "
            f"schema, got {schema_ref!r}"
        )
    relative = path.parent / schema_ref
    schema = load_schema(relative if relative.is_file() else schema_ref)
    raw = {**raw, "schema": schema}
    raw.setdefault("name", path.stem)
    return spec_from_dict(raw)


def spec_from_dict(raw: Mapping[str, Any]) -> FeatureSpec:
    """Build and validate a spec from parsed TOML or :meth:`FeatureSpec.to_dict`."""
    name = str(raw.get("name", "unnamed"))
    schema = raw.get("schema")
    if not isinstance(schema, Mapping):
        raise SpecError(
            f"feature spec {name!r}: 'schema' must be an Avro record schema"
        )
    avro_fields = avro_record_fields(schema)
    problem = _Problems(name, avro_fields)

    event_id = _required_str(raw, "event_id", name)
    event_time = _required_str(raw, "event_time", name)
    label = _required_str(raw, "label", name)
    problem.expect_type(event_id, "event_id", ("string",))
    problem.expect_type(event_time, "event_time", ("long",))
    problem.expect_type(label, "label", ("string",))

    raw_fields = raw.get("fields")
    if isinstance(raw_fields, list):
        raw_fields = {
            entry.get("name"): {k: v for k, v in entry.items() if k != "name"}
            for entry in raw_fields
            if isinstance(entry, Mapping)
        }
    if not isinstance(raw_fields, Mapping) or not raw_fields:
        raise SpecError(
            f"feature spec {name!r}: needs a [fields.NAME] table per feature field"
        )
    fields = tuple(
        _field_from_dict(name, key, value, problem) for key, value in raw_fields.items()
    )
    reserved = {event_id, event_time, label}
    for field_spec in fields:
        if field_spec.name in reserved:
            raise SpecError(
                f"feature spec {name!r}: field {field_spec.name!r} is the "
                "event id, event time or label and cannot be a feature"
            )

    crosses = tuple(
        _cross_from_dict(name, entry, fields) for entry in raw.get("crosses", [])
    )
    return FeatureSpec(
        name=name,
        schema=dict(schema),
        event_id_field=event_id,
        event_time_field=event_time,
        label_field=label,
        fields=fields,
        crosses=crosses,
        avro_fields=avro_fields,
    )


def avro_record_fields(schema: Mapping[str, Any]) -> dict[str, AvroField]:
    """Return the top-level fields of an Avro record schema by name."""
    result: dict[str, AvroField] = {}
    for entry in schema.get("fields", []):
        result[entry["name"]] = _avro_field(entry["name"], entry["type"])
    return result


def fingerprint(spec: FeatureSpec, config: object | None = None) -> str:
    """Return a stable hex digest of a spec and a model config.

    Two learners can exchange weights only when their fingerprints match: the
    digest covers the schema, every feature option and every field of
    ``config`` (a dataclass or a mapping).
    """
    if config is None:
        config_data: Any = None
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config_data = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        config_data = dict(config)
    else:
        raise TypeError(
            f"fingerprint: config must be a dataclass or a mapping, "
            f"got {type(config).__name__}"
        )
    canonical = json.dumps(
        {"spec": spec.to_dict(), "config": config_data},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Problems:
    """Checks of spec names against the schema, with messages that name the field."""

    def __init__(self, spec_name: str, avro_fields: Mapping[str, AvroField]) -> None:
        self.spec_name = spec_name
        self.avro_fields = avro_fields

    def lookup(self, field_name: str, role: str) -> AvroField:
        if field_name not in self.avro_fields:
            known = ", ".join(self.avro_fields)
            raise SpecError(
                f"feature spec {self.spec_name!r}: {role} {field_name!r} is "
                f"not in the Avro schema; fields are: {known}"
            )
        return self.avro_fields[field_name]

    def expect_type(self, field_name: str, role: str, allowed: tuple[str, ...]) -> None:
        avro_field = self.lookup(field_name, f"{role} field")
        if avro_field.base_type not in allowed:
            raise SpecError(
                f"feature spec {self.spec_name!r}: {role} field "
                f"{field_name!r} has Avro type {avro_field.base_type!r}; "
                f"allowed: {', '.join(allowed)}"
            )


def _field_from_dict(
    spec_name: str, field_name: str, options: Any, problems: _Problems
) -> FieldSpec:
    where = f"feature spec {spec_name!r}: field {field_name!r}"
    if not isinstance(options, Mapping):
        raise SpecError(f"{where}: options must be a table, got {options!r}")
    kind = options.get("kind")
    if kind not in FIELD_KINDS:
        raise SpecError(
            f"{where}: kind {kind!r} is invalid; allowed: {', '.join(FIELD_KINDS)}"
        )
    known_options = {"kind", "transform", "buckets", "value_token", "weight"}
    unknown = sorted(set(options) - known_options)
    if unknown:
        raise SpecError(
            f"{where}: unknown option(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(known_options))}"
        )

    avro_field = problems.lookup(field_name, "field")
    allowed_types = _KIND_AVRO_TYPES[kind]
    if avro_field.base_type not in allowed_types:
        raise SpecError(
            f"{where}: kind {kind!r} needs Avro type "
            f"{' or '.join(allowed_types)}, but the schema has "
            f"{avro_field.base_type!r}"
        )
    if avro_field.logical_type is not None:
        raise SpecError(
            f"{where}: Avro logical type {avro_field.logical_type!r} is not "
            "supported as a feature; use a plain int, long, float or double field"
        )
    if kind == "multi_valued" and avro_field.items != "string":
        raise SpecError(
            f"{where}: kind 'multi_valued' needs an array of strings, "
            f"but the items are {avro_field.items!r}"
        )

    transform = options.get("transform", "none")
    buckets = options.get("buckets", 0)
    value_token = options.get("value_token", False)
    weight = options.get("weight", 1.0)
    if kind != "numeric" and (
        "transform" in options or "buckets" in options or "value_token" in options
    ):
        raise SpecError(
            f"{where}: transform, buckets and value_token apply only to "
            f"numeric fields, not to kind {kind!r}"
        )
    if transform not in NUMERIC_TRANSFORMS:
        raise SpecError(
            f"{where}: transform {transform!r} is invalid; allowed: "
            f"{', '.join(NUMERIC_TRANSFORMS)}"
        )
    if (
        not isinstance(buckets, int)
        or isinstance(buckets, bool)
        or not 0 <= buckets <= 1024
    ):
        raise SpecError(
            f"{where}: buckets must be an integer from 0 to 1024, got {buckets!r}"
        )
    if not isinstance(value_token, bool):
        raise SpecError(
            f"{where}: value_token must be true or false, got {value_token!r}"
        )
    if (
        not isinstance(weight, int | float)
        or isinstance(weight, bool)
        or not 0 < weight < math.inf
    ):
        raise SpecError(
            f"{where}: weight must be a positive finite number, got {weight!r}"
        )
    return FieldSpec(
        name=field_name,
        kind=kind,
        transform=transform,
        buckets=buckets,
        value_token=value_token,
        weight=float(weight),
    )


def _cross_from_dict(
    spec_name: str, entry: Any, fields: tuple[FieldSpec, ...]
) -> CrossSpec:
    where = f"feature spec {spec_name!r}: cross {entry!r}"
    names = entry.get("fields") if isinstance(entry, Mapping) else None
    if (
        not isinstance(names, list)
        or len(names) < 2
        or not all(isinstance(n, str) for n in names)
    ):
        raise SpecError(f"{where}: needs 'fields', a list of two or more field names")
    exact = entry.get("exact", False)
    if not isinstance(exact, bool):
        raise SpecError(f"{where}: exact must be true or false, got {exact!r}")
    by_name = {f.name: f for f in fields}
    for cross_field in names:
        if cross_field not in by_name:
            raise SpecError(
                f"{where}: field {cross_field!r} is not a feature field of "
                f"the spec; features are: {', '.join(by_name)}"
            )
        field_spec = by_name[cross_field]
        if exact and field_spec.kind == "numeric" and not field_spec.value_token:
            raise SpecError(
                f"{where}: an exact cross needs value_token = true on numeric "
                f"field {cross_field!r}"
            )
        if not exact and field_spec.kind == "numeric" and field_spec.buckets == 0:
            raise SpecError(
                f"{where}: numeric field {cross_field!r} takes part in a "
                "cross only through its buckets; set buckets > 0"
            )
    bag_fields = [n for n in names if by_name[n].kind in ("multi_valued", "text")]
    if len(bag_fields) > 1:
        raise SpecError(
            f"{where}: at most one multi-valued or text field per cross, "
            f"got {', '.join(bag_fields)}"
        )
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: a field appears twice")
    return CrossSpec(fields=tuple(names), exact=exact)


def _required_str(raw: Mapping[str, Any], key: str, spec_name: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise SpecError(
            f"feature spec {spec_name!r}: {key!r} must name a schema "
            f"field, got {value!r}"
        )
    return value


def _avro_field(name: str, avro_type: Any) -> AvroField:
    nullable = False
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        nullable = len(branches) < len(avro_type)
        if len(branches) != 1:
            return AvroField(name, "union", nullable)
        avro_type = branches[0]
    if isinstance(avro_type, str):
        return AvroField(name, avro_type, nullable)
    base = avro_type.get("type", "unknown")
    items = avro_type.get("items") if base == "array" else None
    return AvroField(
        name,
        base,
        nullable,
        items=items if isinstance(items, str) else None,
        logical_type=avro_type.get("logicalType"),
    )


def _resolve(name_or_path: str | Path, directory: Path, suffix: str, what: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    named = directory / f"{name_or_path}{suffix}"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in directory.glob(f"*{suffix}")))
    raise SpecError(
        f"{what} {str(name_or_path)!r} not found: not a file, and not one "
        f"of the shipped names ({known})"
    )

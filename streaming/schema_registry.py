"""Writer schemas the job accepts, looked up by their Avro fingerprint.

A producer identifies the schema it wrote an event with by the schema's
CRC-64-AVRO fingerprint (the 64-bit Rabin fingerprint of the schema's Parsing
Canonical Form, Avro specification 1.11, "Schema Fingerprints"). The job keeps
the writer schemas it accepts in a folder of ``.avsc`` files and resolves every
event against its own reader schema, so producers on an older or newer
compatible schema keep working.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

logger = logging.getLogger(__name__)

Schema = dict[str, Any]

# Deepest nesting of JSON objects and arrays accepted in a schema. fastavro
# parses and reads schemas by recursion, so a deeper schema could exhaust the
# stack. The shipped schemas nest 4 levels deep.
MAX_SCHEMA_DEPTH = 64
_NAMED_TYPES = ("record", "error", "enum", "fixed")


class SchemaRegistryError(ValueError):
    """A schema file that cannot be read or parsed."""


def check_schema_structure(schema: Any) -> None:
    """Raise SchemaRegistryError if a JSON schema is too deep or recursive.

    A recursive type (a record that contains itself) is valid Avro, but
    fastavro's compiled reader recurses once per level of the data and
    crashes the process with a stack overflow on a few hundred kilobytes of
    crafted nesting. Schemas from outside must therefore not contain one.
    """
    if _json_depth(schema) > MAX_SCHEMA_DEPTH:
        raise SchemaRegistryError(
            f"schema nests JSON objects and arrays more than {MAX_SCHEMA_DEPTH} "
            "levels deep"
        )
    _reject_recursive_types(schema, "", frozenset())


def _json_depth(value: Any) -> int:
    """Return the nesting depth, or the first depth past the maximum."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _reject_recursive_types(
    node: Any, namespace: str, enclosing: frozenset[str]
) -> None:
    """Walk a schema of bounded depth; ``enclosing`` contains the named types
    whose definitions contain ``node``."""
    if isinstance(node, str):
        if _full_name(node, namespace) in enclosing:
            raise SchemaRegistryError(
                f"schema type {node!r} contains itself; recursive types are not "
                "accepted"
            )
        return
    if isinstance(node, list):
        for member in node:
            _reject_recursive_types(member, namespace, enclosing)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED_TYPES and isinstance(node.get("name"), str):
        name = node["name"]
        namespace = str(node.get("namespace", namespace))
        full_name = _full_name(name, namespace)
        namespace = full_name.rpartition(".")[0]
        for field_ in node.get("fields", []) if kind in ("record", "error") else []:
            if isinstance(field_, dict):
                _reject_recursive_types(
                    field_.get("type"), namespace, enclosing | {full_name}
                )
    elif kind == "array":
        _reject_recursive_types(node.get("items"), namespace, enclosing)
    elif kind == "map":
        _reject_recursive_types(node.get("values"), namespace, enclosing)
    else:
        _reject_recursive_types(kind, namespace, enclosing)


def parse_schema(schema: Mapping[str, Any] | str) -> Schema:
    """Parse an Avro schema with fastavro, without fastavro's write hints."""
    source = schema if isinstance(schema, str) else dict(schema)
    return cast(Schema, fastavro.parse_schema(source, _write_hint=False))


def schema_fingerprint(schema: Mapping[str, Any] | str) -> str:
    """Return the CRC-64-AVRO fingerprint of ``schema`` as 16 hex digits.

    The digits are the fingerprint's 8 bytes in little-endian order, the same
    bytes that follow the marker in Avro single-object encoding.
    """
    parsed = parse_schema(schema)
    canonical = to_parsing_canonical_form(parsed)
    result: str = fingerprint(canonical, "CRC-64-AVRO")
    return result


class SchemaRegistry:
    """Known writer schemas, keyed by fingerprint.

    >>> registry = SchemaRegistry([{"type": "record", "name": "E",
    ...     "fields": [{"name": "id", "type": "string"}]}])
    >>> registry.fingerprints()
    ['764abe4de2f097eb']
    """

    def __init__(self, schemas: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_fingerprint: dict[str, Schema] = {}
        for schema in schemas:
            self.add(schema)

    @classmethod
    def from_folder(cls, folder: str | Path) -> SchemaRegistry:
        """Load every ``*.avsc`` file in ``folder``."""
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise SchemaRegistryError(
                f"schema folder {str(path)!r} does not exist or is not a folder"
            )
        registry = cls()
        for file in sorted(path.glob("*.avsc")):
            registry.add_file(file)
        logger.info(
            "loaded %d writer schemas from %s", len(registry._by_fingerprint), path
        )
        return registry

    def add_file(self, file: str | Path) -> str:
        """Parse one ``.avsc`` file, add it and return its fingerprint."""
        try:
            schema = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise SchemaRegistryError(
                f"cannot read Avro schema file {str(file)!r}: {error}"
            ) from error
        return self.add(schema)

    def add(self, schema: Mapping[str, Any]) -> str:
        """Add a writer schema and return its fingerprint.

        Raises SchemaRegistryError for an invalid, too deep or recursive schema.
        """
        check_schema_structure(schema)
        try:
            parsed = parse_schema(schema)
        except Exception as error:  # fastavro raises several unrelated types
            raise SchemaRegistryError(f"invalid Avro schema: {error}") from error
        key = schema_fingerprint(parsed)
        self._by_fingerprint[key] = parsed
        return key

    def get(self, fingerprint_hex: str) -> Schema | None:
        """Return the parsed schema with this fingerprint, or None if unknown."""
        return self._by_fingerprint.get(fingerprint_hex.lower())

    def fingerprints(self) -> list[str]:
        """Return the fingerprints of all known schemas, sorted."""
        return sorted(self._by_fingerprint)

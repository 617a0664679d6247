"""A fast first check of a request body, derived from the same JSON Schema as the full one.

The full check (:func:`bulkbatch.emulator.spec.body_validator`, fastjsonschema) costs 5-6 ms
per 1,000-user ingest body on the 2-core bench machine, about a third of the emulator's work
per batch; the emulator's one event loop is what bounds a benchmark's ingest rate. A
``msgspec`` decoder that only validates the raw body costs 2-2.4 ms.

The decoder is built from the schema, not written by hand, and it may only be *stricter*
than the schema: a body it accepts is valid, and anything it refuses goes through the full
check, which decides and words the error. So it translates only what it can say exactly:

- ``{}`` (any value); ``string``; ``object`` with ``properties`` (a struct) or without (any
  JSON object); ``array`` with ``items``; ``"null"`` in a type list; ``anyOf [X, null]``;
  ``$ref``; ``required``; an ``allOf`` of objects that constrain nothing (Courier's empty
  ``UserRecipientType``).
- Every struct forbids fields it does not know, including properties whose schema uses
  anything else (an ``enum``, a number, a nested union): such a body takes the full check.
- A ``required`` property that cannot be translated makes its whole object untranslatable.

msgspec checks every occurrence of a repeated key, so a body it accepts is valid whichever
occurrence the JSON parser keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["body_decoder"]

JsonDict = dict[str, Any]
_MAX_DEPTH = 8  # $ref chains deeper than this (or cyclic) are left to the full check
_SCALARS: Mapping[str, Any] = {"string": str}
_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "allOf"}


class _Untranslatable(Exception):
    """The schema uses something the fast check cannot say exactly."""


def body_decoder(document: JsonDict) -> msgspec.json.Decoder[Any] | None:
    """A decoder that accepts only bodies ``document`` accepts, or ``None`` if it cannot."""
    defs = document.get("definitions", {})
    schema = {k: v for k, v in document.items() if k != "definitions"}
    try:
        return msgspec.json.Decoder(_type(schema, defs, 0, "Body"))
    except _Untranslatable:
        return None


def _type(schema: Any, defs: Mapping[str, Any], depth: int, name: str) -> Any:
    if depth > _MAX_DEPTH or not isinstance(schema, dict):
        raise _Untranslatable
    if schema == {}:
        return Any
    if set(schema) == {"$ref"}:
        return _type(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, depth + 1, name)
    if set(schema) == {"anyOf"}:
        branches = schema["anyOf"]
        if isinstance(branches, list) and len(branches) == 2 and branches[1] == {"type": "null"}:
            return _type(branches[0], defs, depth + 1, name) | None
        raise _Untranslatable
    if not set(schema) <= _KEYWORDS or "type" not in schema:
        raise _Untranslatable
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    nullable = "null" in kinds
    kinds = [k for k in kinds if k != "null"]
    if len(kinds) != 1:
        raise _Untranslatable
    found = _typed(kinds[0], schema, defs, depth, name)
    return found | None if nullable else found


def _typed(kind: str, schema: JsonDict, defs: Mapping[str, Any], depth: int, name: str) -> Any:
    extra = set(schema) - {"type"}
    if kind in _SCALARS and not extra:
        return _SCALARS[kind]
    if kind == "array" and extra <= {"items"}:
        return list[_type(schema.get("items", {}), defs, depth + 1, name)]  # type: ignore[misc]
    if kind == "object":
        for part in schema.get("allOf", []):
            ref = part.get("$ref", "") if isinstance(part, dict) else ""
            target = defs.get(ref.rsplit("/", 1)[-1], part) if ref else part
            if target not in ({"type": "object"}, {"type": "object", "properties": {}}):
                raise _Untranslatable
        if schema.get("additionalProperties", True) is not True and not schema.get("properties"):
            raise _Untranslatable
        if not schema.get("properties") and not schema.get("required"):
            return dict[str, Any]
        return _struct(schema, defs, depth, name)
    raise _Untranslatable


def _struct(schema: JsonDict, defs: Mapping[str, Any], depth: int, name: str) -> Any:
    """A struct with the properties that translate; it refuses every other field."""
    required = schema.get("required", [])
    fields: list[tuple[str, Any, Any]] = []
    for i, (prop, sub) in enumerate(schema.get("properties", {}).items()):
        try:
            kind = _type(sub, defs, depth + 1, f"{name}_{i}")
        except _Untranslatable:
            if prop in required:
                raise
            continue  # left out: a body that has it takes the full check
        if prop in required:
            fields.append((f"f{i}", kind, msgspec.field(name=prop)))
        else:
            fields.append((f"f{i}", kind, msgspec.field(name=prop, default=None)))
    if not set(required) <= {f[2].name for f in fields}:
        raise _Untranslatable  # a required name with no property schema
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)

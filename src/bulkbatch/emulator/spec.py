"""The vendored Courier OpenAPI file as compiled request validators.

``courier-openapi.yaml`` (package data, a verbatim copy of the project's reference spec) is
the contract. Its OpenAPI 3.0 schemas are turned into JSON Schema (``nullable`` becomes a
``"null"`` type or an ``anyOf``) and compiled once per schema with ``fastjsonschema``.

Why fastjsonschema: a 1000-user ingest body must stay cheap. Measured on the dev machine,
``jsonschema`` (even a cached ``Draft7Validator``) takes ~90 ms per 1000-user body and
openapi-core more; fastjsonschema's generated code takes ~2.5 ms, about as long as parsing
the JSON. openapi-core is used only by the opt-in response check (:mod:`.contract`).

A failure becomes one line that names the field, e.g. ``message.locale must be an object
(or null), not a string.`` The body is validated as a whole; nothing is stored on failure.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
import msgspec
import yaml

from bulkbatch.emulator.fastcheck import body_decoder

__all__ = [
    "JOB_MESSAGE_FIELDS",
    "SpecViolation",
    "body_validator",
    "load_spec",
    "query_types",
]

JsonDict = dict[str, Any]
SPEC_FILE = "courier-openapi.yaml"
_REF = "#/components/schemas/"

_ARTICLES = {"object": "an object", "array": "an array", "integer": "an integer"}
# Friendlier names for the union schemas than "must match one of the definitions".
_UNIONS = {
    "Content": "ElementalContentSugar {title, body} or ElementalContent {version, elements}",
    "ElementalNode": "an Elemental node (type text, meta, channel, image, action, divider "
    "or quote, with that node's required fields)",
}


class SpecViolation(Exception):
    """A request that does not match the spec; ``str()`` is the one-line 400 message."""


@functools.cache
def load_spec() -> JsonDict:
    """The vendored OpenAPI document (parsed once per process)."""
    text = importlib.resources.files("bulkbatch.emulator").joinpath(SPEC_FILE).read_text()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec: JsonDict = yaml.load(text, Loader=loader)
    return spec


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema draft 7 (``nullable``, ``$ref`` targets)."""
    if isinstance(node, list):
        return [_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _to_json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-") and k not in ("title", "description", "example", "properties")
    }
    if isinstance(node.get("properties"), dict):  # property names are data, not keywords
        out["properties"] = {k: _to_json_schema(v) for k, v in node["properties"].items()}
    nullable = out.pop("nullable", False)
    if "$ref" in out:
        ref = {"$ref": out["$ref"].replace(_REF, "#/definitions/")}
        return {"anyOf": [ref, {"type": "null"}]} if nullable else ref
    if nullable and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    elif nullable and out:
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def _operation(spec: JsonDict, method: str, path: str) -> JsonDict:
    op: JsonDict = spec["paths"][path][method.lower()]
    return op


def _definitions(flavor: str) -> JsonDict:
    spec = load_spec()
    defs: JsonDict = {k: _to_json_schema(v) for k, v in spec["components"]["schemas"].items()}
    message = dict(defs["InboundBulkMessage"])
    if flavor == "current":
        # The schema does not say additionalProperties: false, but the current job message
        # has no routing/metadata/nested ``message`` (courier-bulk-api.md §2.1,
        # courier-tracking.md §4.2-4.3): the emulator refuses such fields rather than
        # silently ignoring them, so a client cannot believe they took effect.
        message["additionalProperties"] = False
    else:
        # The current bulk tutorial sends ``{"message": {"message": {"template": ...}}}``
        # without ``event`` (courier-tracking.md §4.2): allow the nested V2 message.
        message["required"] = []
        message["properties"] = {
            **message["properties"],
            "message": {"type": ["object", "null"]},
        }
    defs["InboundBulkMessage"] = message
    return defs


JOB_MESSAGE_FIELDS = tuple(
    sorted(load_spec()["components"]["schemas"]["InboundBulkMessage"]["properties"])
)


@functools.cache
def _compiled(
    flavor: str, method: str, path: str
) -> tuple[Callable[[Any], Any], JsonDict, msgspec.json.Decoder[Any] | None]:
    body = _operation(load_spec(), method, path)["requestBody"]["content"]["application/json"]
    schema = _to_json_schema(body["schema"])
    defs = _definitions(flavor)
    if flavor == "tutorial" and path == "/bulk/{job_id}":
        # The backend snapshot handled each user on its own (an ERROR user, or "Error
        # occurred during ingestion"); the tutorial flavor keeps that, so only the
        # envelope is checked here.
        schema = {"type": "object", "properties": {"users": {"type": "array"}}}
        schema["required"] = ["users"]
    document = {"definitions": defs, **schema}
    validate = fastjsonschema.compile(document, use_formats=False)
    return validate, defs, body_decoder(document)


def body_validator(flavor: str, method: str, path: str) -> Callable[[Any, bytes | None], None]:
    """``check(body, raw)`` raises :class:`SpecViolation` if ``body`` breaks the spec.

    ``raw``, the bytes ``body`` was parsed from, lets a valid body pass the fast check of
    :mod:`.fastcheck` (2-2.4 ms per 1,000 users instead of 5-6); a body it refuses, or none,
    is decided and worded by the full check.
    """
    validate, defs, fast = _compiled(flavor, method, path)

    def check(body: Any, raw: bytes | None = None) -> None:
        if fast is not None and raw is not None:
            try:
                fast.decode(raw)
                return
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # the full check below decides, and words the error
        try:
            validate(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise SpecViolation(_message(exc, defs)) from None

    return check


def _field(path: list[str]) -> str:
    out = ""
    for part in path[1:]:  # path[0] is fastjsonschema's "data"
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "the request body"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _signature(branches: Any, defs: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    """The ``required`` lists of a union's branches, ``$ref`` resolved (how it is recognised:
    fastjsonschema reports the branches resolved)."""
    out = []
    for branch in branches if isinstance(branches, list) else []:
        if isinstance(branch, dict) and "$ref" in branch:
            branch = defs.get(branch["$ref"].rsplit("/", 1)[-1], {})
        out.append(tuple(branch.get("required", ())) if isinstance(branch, dict) else ())
    return tuple(out)


def _union_name(rule_def: Any, defs: Mapping[str, Any]) -> str | None:
    for name, words in _UNIONS.items():
        if _signature(rule_def, defs) == _signature(defs[name].get("oneOf"), defs):
            return words
    return None


def _message(exc: Any, defs: Mapping[str, Any], prefix: list[str] | None = None) -> str:
    path = list(exc.path) if prefix is None else [*prefix, *list(exc.path)[1:]]
    field = _field(path)
    rule, rule_def, value = exc.rule, exc.rule_definition, exc.value
    if rule == "required":
        have = value if isinstance(value, dict) else {}
        missing = next((name for name in rule_def if name not in have), rule_def[0])
        parent = "" if field == "the request body" else f"{field}."
        return f"{parent}{missing} is required."
    if rule == "type":
        types = rule_def if isinstance(rule_def, list) else [rule_def]
        wanted = " or ".join(_ARTICLES.get(t, f"a {t}") for t in types if t != "null")
        nullable = " (or null)" if "null" in types else ""
        return f"{field} must be {wanted}{nullable}, not {_kind(value)}."
    if rule == "enum":
        allowed = ", ".join(str(v) for v in rule_def if v is not None)
        return f"{field} must be one of {allowed}, not {value!r}."
    if rule == "additionalProperties" and isinstance(value, dict):
        known = set(exc.definition.get("properties", {}))
        extra = sorted(k for k in value if k not in known)
        names = ", ".join(sorted(known))
        return (
            f"{field}.{extra[0] if extra else '?'} is not a field of the current bulk job "
            f"message (it takes {names}); routing comes from the event's notification."
        )
    if rule in ("anyOf", "oneOf"):
        union = _union_name(rule_def, defs)
        if union:
            return f"{field} must be exactly one of {union}."
        inner = _nullable_inner(rule_def)
        if inner is not None:
            # ``nullable`` $ref: explain why the value fails the referenced schema itself.
            try:
                _sub_validator(repr(inner), inner, defs)(value)
            except fastjsonschema.JsonSchemaValueException as sub:
                return _message(sub, defs, path)
    return f"{field} is invalid ({exc.message.split(' ', 1)[-1]})."


def _nullable_inner(rule_def: Any) -> JsonDict | None:
    if isinstance(rule_def, list) and len(rule_def) == 2 and rule_def[1] == {"type": "null"}:
        inner: JsonDict = rule_def[0]
        return inner
    return None


_SUB_CACHE: dict[str, Callable[[Any], Any]] = {}


def _sub_validator(key: str, schema: JsonDict, defs: Mapping[str, Any]) -> Callable[[Any], Any]:
    # Only on the error path; keyed by the schema's repr (defs are the same per flavor).
    if key not in _SUB_CACHE:
        _SUB_CACHE[key] = fastjsonschema.compile({"definitions": dict(defs), **schema})
    return _SUB_CACHE[key]


def query_types(method: str, path: str) -> dict[str, str]:
    """``{name: type}`` of an operation's query parameters (``array`` items are strings)."""
    params = _operation(load_spec(), method, path).get("parameters", [])
    return {p["name"]: p["schema"]["type"] for p in params if p["in"] == "query"}

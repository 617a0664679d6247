"""The fast body check may only be stricter than the spec's full check, never more lenient.

A lenient emulator would hide client bugs that Courier refuses. So: whatever the fast
decoder accepts, the full (fastjsonschema) check accepts too, on generated bodies one to
three changes away from valid ones; a valid body it does not model still passes (through
the full check); an invalid body gets the full check's words; and a body like bulkbatch's
takes the fast path.
"""

from __future__ import annotations

import copy
from typing import Any

import fastjsonschema
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.emulator import spec
from bulkbatch.emulator.backend import Backend, ValidationError
from bulkbatch.emulator.fastcheck import body_decoder

INGEST = ("POST", "/bulk/{job_id}")
CREATE = ("POST", "/bulk")
CASES = [(flavor, *op) for flavor in ("current", "tutorial") for op in (INGEST, CREATE)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=4)
)
junk: st.SearchStrategy[Any] = st.one_of(scalars, st.just({}), st.just([]), st.just({"k": [1]}))
# A valid body per operation, and where one of its objects can be changed.
BASES: dict[str, Any] = {
    "/bulk/{job_id}": {
        "users": [{"recipient": "r", "profile": {"email": "e"}, "to": {"user_id": "u"}, "data": {}}]
    },
    "/bulk": {"message": {"event": "welcome", "data": {"k": 1}}},
}
PLACES: dict[str, list[tuple[str | int, ...]]] = {
    "/bulk/{job_id}": [(), ("users",), ("users", 0), ("users", 0, "to"), ("users", 0, "profile")],
    "/bulk": [(), ("message",), ("message", "data")],
}
KEYS = sorted(  # every property name of the schemas involved, and one unknown
    {"users", "message", "recipient", "profile", "data", "to", "preferences", "user_id",
     "account_id", "email", "locale", "phone_number", "list_id", "tenant_id", "context",
     "event", "template", "brand", "override", "content", "routing", "categories",
     "notifications", "unknown"}
)  # fmt: skip
changes = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.sampled_from(KEYS),
        st.one_of(junk, st.text(max_size=2), st.just({"k": 1}), st.just([{}])),
    ),
    min_size=1,
    max_size=3,
)


def _changed(path: str, edits: list[tuple[int, str, Any]]) -> Any:
    """The valid body of ``path`` with each ``(place, key, value)`` set (or appended)."""
    body = copy.deepcopy(BASES[path])
    places = PLACES[path]
    for where, key, value in edits:
        target = body
        for step in places[where % len(places)]:
            try:
                target = target[step]
            except (KeyError, IndexError, TypeError):
                target = None  # an earlier change replaced this place
                break
        if isinstance(target, dict):
            target[key] = copy.deepcopy(value)
        elif isinstance(target, list):
            target.append(copy.deepcopy(value))
    return body


def _full_accepts(flavor: str, method: str, path: str, body: Any) -> bool:
    validate = spec._compiled(flavor, method, path)[0]
    try:
        validate(body)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def _fast_accepts(flavor: str, method: str, path: str, raw: bytes) -> bool:
    fast = spec._compiled(flavor, method, path)[2]
    assert fast is not None, (flavor, method, path)
    try:
        fast.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return True


@pytest.mark.parametrize(("flavor", "method", "path"), CASES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=changes)
def test_whatever_the_fast_check_accepts_the_full_check_accepts(
    flavor: str, method: str, path: str, edits: list[tuple[int, str, Any]]
) -> None:
    raw = orjson.dumps(_changed(path, edits))
    body = orjson.loads(raw)  # as the emulator parses it (orjson writes inf as null)
    if _fast_accepts(flavor, method, path, raw):
        assert _full_accepts(flavor, method, path, body), body


@pytest.mark.parametrize(
    "raw",
    [
        b'{"users": [{"recipient": "a", "recipient": 5}]}',  # every occurrence is checked
        b'{"users": [{"recipient": 5, "recipient": "a"}]}',
        b'{"users": [], "users": 5}',
    ],
)
def test_a_repeated_key_is_refused_if_any_occurrence_is_invalid(raw: bytes) -> None:
    assert not _fast_accepts("current", *INGEST, raw)


def test_a_body_like_bulkbatchs_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    users = [
        {"recipient": f"u{i}", "profile": {"email": f"u{i}@example.com"},
         "to": {"user_id": f"u{i}", "locale": "fr"}, "data": {"plan": "pro", "n": i}}
        for i in range(1000)
    ]  # fmt: skip
    raw = orjson.dumps({"users": users})
    _full, defs, fast = spec._compiled("current", *INGEST)

    def refuse(body: Any) -> None:
        raise AssertionError("the full check ran on a body the fast check models")

    monkeypatch.setattr(spec, "_compiled", lambda *a: (refuse, defs, fast))
    assert Backend().validate_ingest(orjson.loads(raw), raw) == users


def test_a_valid_body_the_fast_check_does_not_model_still_passes() -> None:
    body = {"users": [{"recipient": "a", "to": {"data": {"k": 1}}, "unknown": 1}]}
    raw = orjson.dumps(body)
    assert not _fast_accepts("current", *INGEST, raw)
    assert Backend().validate_ingest(body, raw) == body["users"]


def test_an_invalid_body_gets_the_full_checks_words() -> None:
    body = {"users": [{"recipient": "a", "to": {"email": 5}}]}
    raw = orjson.dumps(body)
    with pytest.raises(ValidationError) as fast:
        Backend().validate_ingest(body, raw)
    with pytest.raises(ValidationError) as full:
        Backend().validate_ingest(body)
    assert str(fast.value) == str(full.value)
    assert "users[0].to.email" in str(fast.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer"},  # numbers are not translated: JSON Schema and msgspec differ
        {"type": "string", "enum": ["a"]},
        {"type": "string", "minLength": 1},
        {"oneOf": [{"type": "string"}, {"type": "object"}]},
        {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"$ref": "#/definitions/Loop"},
    ],
)
def test_what_cannot_be_said_exactly_is_left_to_the_full_check(schema: dict[str, Any]) -> None:
    document = {"definitions": {"Loop": {"$ref": "#/definitions/Loop"}}, **schema}
    assert body_decoder(document) is None


def test_an_untranslatable_optional_field_sends_its_bodies_to_the_full_check() -> None:
    document = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
    }
    fast = body_decoder(document)
    assert fast is not None
    fast.decode(b'{"name": "a"}')
    with pytest.raises(msgspec.ValidationError):
        fast.decode(b'{"name": "a", "size": 1}')  # valid, but not the fast check's to say

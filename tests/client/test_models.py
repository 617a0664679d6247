"""The users-page parsers: the lean typed decoder tracking uses must agree with the full
checked parser on every body, valid or not (same columns, or the same error)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulkbatch.client.models import (
    UserStatuses,
    Where,
    parse_user_statuses,
    parse_users_page,
)
from bulkbatch.errors import BadResponse

WHERE = Where("GET", "/bulk/j/users", 200)

# Values a hostile or buggy server might put where a field belongs.
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.lists(st.integers(-9, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
)
_STATUS = st.one_of(st.sampled_from(["PENDING", "ENQUEUED", "ERROR"]), _ODD)


@st.composite
def _user(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(_ODD)  # not an object at all
    user: dict[str, Any] = {"profile": {"email": draw(st.text(max_size=8))}}
    for name, value in (
        ("status", _STATUS),
        ("recipient", st.one_of(st.text(max_size=6), _ODD)),
        ("messageId", st.one_of(st.text(max_size=6), _ODD)),
    ):
        if draw(st.integers(0, 6)):
            user[name] = draw(value)
    return user


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([b"", b"<html>", b"[]", b"null", b'{"items": [}']))
    body: dict[str, Any] = {}
    if draw(st.integers(0, 15)):
        body["items"] = draw(st.lists(_user(), max_size=4)) if draw(st.integers(0, 15)) else None
    if draw(st.integers(0, 15)):
        paging: dict[str, Any] = {}
        if draw(st.integers(0, 10)):
            paging["more"] = draw(st.one_of(st.booleans(), _ODD))
        if draw(st.booleans()):
            paging["cursor"] = draw(st.one_of(st.sampled_from(["", "c1"]), _ODD))
        body["paging"] = paging if draw(st.integers(0, 15)) else draw(_ODD)
    return orjson.dumps(body)


def _decode(content: bytes) -> Any:
    """What ``HttpCore.json`` does: ``None`` for no body, one error for a non-JSON one."""
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        raise BadResponse("GET", "/bulk/j/users", 200, "the body is not JSON") from None


def _full(content: bytes) -> UserStatuses:
    return UserStatuses.of(parse_users_page(WHERE, _decode(content)))


def _outcome(parse: Any, content: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(content)
    except BadResponse as exc:
        return "error", str(exc)


@settings(max_examples=400)
@given(_body())
@example(b'{"items": [{"status": "ERROR"}], "paging": {"more": false, "cursor": ""}}')
def test_lean_decoder_agrees_with_the_checked_parser(content: bytes) -> None:
    lean = _outcome(lambda c: parse_user_statuses(WHERE, c, lambda: _decode(c)), content)
    assert lean == _outcome(_full, content)


def test_a_valid_page_never_builds_the_full_users() -> None:
    users = [
        {"recipient": f"u{n}", "status": "ENQUEUED", "messageId": f"m{n}", "data": {"n": n}}
        for n in range(3)
    ] + [{"status": "PENDING", "profile": {"email": "a@b.c"}}]
    content = orjson.dumps({"items": users, "paging": {"more": True, "cursor": "c2"}})

    def decode() -> Any:
        raise AssertionError("a valid page must not be decoded a second time")

    page = parse_user_statuses(WHERE, content, decode)
    assert page == UserStatuses(
        recipients=["u0", "u1", "u2", None],
        statuses=["ENQUEUED", "ENQUEUED", "ENQUEUED", "PENDING"],
        message_ids=["m0", "m1", "m2", None],
        cursor="c2",
        more=True,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"items": [{"status": "SENT"}], "paging": {"more": False}}, "items[0].status is 'SENT'"),
        ({"items": [{"status": True}], "paging": {"more": False}}, "items[0].status is True"),
        ({"items": [{"status": "ERROR"}], "paging": {"more": 1}}, "paging.more is 1"),
        ({"items": ["u1"], "paging": {"more": False}}, "items[0] is 'u1', not an object"),
    ],
)
def test_a_bad_page_fails_with_the_checked_parsers_words(
    body: dict[str, Any], message: str
) -> None:
    content = orjson.dumps(body)
    with pytest.raises(BadResponse) as info:
        parse_user_statuses(WHERE, content, lambda: orjson.loads(content))
    assert message in str(info.value)

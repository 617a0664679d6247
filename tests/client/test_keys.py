"""Header hygiene: the API key, Idempotency-Keys, h11's "Illegal header value", plain http."""

from __future__ import annotations

import traceback

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkbatch.client._http import Call
from bulkbatch.client.courier import CourierClient, RetryEvent
from bulkbatch.client.security import (
    check_idempotency_key,
    clean_api_key,
    insecure_transport,
    insecure_transport_warning,
    is_loopback_host,
)
from bulkbatch.config import Settings
from bulkbatch.errors import InvalidApiKey, InvalidHeader, Terminal, UsageError
from tests.client.support import JOB, SECRET, Recorder, assert_one_clear_line, make_client

PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))


def _all_text(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` would print (chained exceptions included)."""
    return "".join(traceback.format_exception(exc))


# -- the API key --------------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "\t", " \r\n\r\n"])
def test_surrounding_whitespace_and_crlf_are_stripped(tail: str) -> None:
    assert clean_api_key(SECRET + tail) == SECRET
    assert clean_api_key(" " + SECRET + tail) == SECRET


def test_empty_or_blank_key_is_no_key() -> None:
    assert clean_api_key(None) is None
    assert clean_api_key("") is None
    assert clean_api_key(" \r\n") is None


@pytest.mark.parametrize(
    ("key", "kind", "position"),
    [
        ("sk_live\r\nX-Evil: 1", "control character (U+000D", 8),
        ("sk_live_\x00abc", "control character (U+0000", 9),
        ("sk_live_\x7fabc", "control character (U+007F", 9),
        ("sk_liv\u00e9_abc", "non-ASCII character (U+00E9", 7),
        ("sk_live_\u200babc", "control character (U+200B", 9),
        ("sk\u00a0live", "whitespace character (U+00A0", 3),
    ],
)
def test_other_bad_characters_are_refused_without_echoing_the_key(
    key: str, kind: str, position: int
) -> None:
    with pytest.raises(InvalidApiKey) as info:
        clean_api_key(key)
    text = assert_one_clear_line(info.value)
    assert kind in text
    assert f"position {position} of" in text
    assert "COURIER_API_KEY" in text
    assert key.strip() not in _all_text(info.value)
    assert "sk_l" not in text
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_the_client_uses_the_stripped_key() -> None:
    rec = Recorder(httpx.Response(202))
    client = make_client(rec, api_key=SECRET + "\r\n")
    assert client._api_key == SECRET


@pytest.mark.anyio
async def test_a_key_with_a_trailing_newline_is_sent_clean() -> None:
    rec = Recorder(httpx.Response(202))
    async with make_client(rec, api_key=SECRET + "\r\n") as client:
        await client.run_job(JOB)
    assert rec.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_the_client_refuses_a_bad_key_at_once() -> None:
    with pytest.raises(InvalidApiKey) as info:
        CourierClient(Settings(base_url="https://x.test", api_key="ab\x07cd"))
    assert "ab\x07cd" not in _all_text(info.value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=40))
def test_any_key_is_either_sent_exactly_or_refused_without_the_key(key: str) -> None:
    """For every possible key: refused with a message that holds no piece of it, or
    stripped of surrounding whitespace and sent byte for byte."""
    inner = key.strip(" \t\r\n")
    try:
        cleaned = clean_api_key(key)
    except InvalidApiKey as exc:
        assert any(not " " <= c <= "~" for c in inner)
        if len(inner) >= 4:
            assert inner not in _all_text(exc)
        return
    assert cleaned == (inner or None)
    if cleaned is not None:
        assert all(" " <= c <= "~" for c in cleaned)
        # Whatever the key, httpx can carry it: encoding as a header does not raise.
        headers = httpx.Headers({"Authorization": f"Bearer {cleaned}"})
        assert headers["authorization"] == f"Bearer {cleaned}"


@settings(max_examples=200)
@given(value=st.text(max_size=30))
def test_any_idempotency_key_is_sent_as_is_or_refused(value: str) -> None:
    ok = bool(value) and all(c in PRINTABLE for c in value)
    if ok:
        assert check_idempotency_key(value) == value
        assert httpx.Headers({"Idempotency-Key": value})["idempotency-key"] == value
    else:
        with pytest.raises(InvalidHeader) as info:
            check_idempotency_key(value)
        assert_one_clear_line(info.value)


# -- Idempotency-Key ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["create_job", "add_users", "run_job"])
async def test_non_ascii_idempotency_key_is_refused_before_sending(method: str) -> None:
    rec = Recorder(httpx.Response(200, json={"jobId": JOB}))
    async with make_client(rec) as client:
        with pytest.raises(InvalidHeader, match=r"Idempotency-Key.*non-ASCII") as info:
            if method == "create_job":
                await client.create_job({"event": "e"}, idempotency_key="run:caf\u00e9")
            elif method == "add_users":
                await client.add_users(JOB, [{"recipient": "a"}], idempotency_key="k\u00e9")
            else:
                await client.run_job(JOB, idempotency_key="r\u00fcn")
    assert rec.requests == []
    assert isinstance(info.value, Terminal)


def test_overlong_idempotency_key_is_refused() -> None:
    with pytest.raises(InvalidHeader, match="256 characters"):
        check_idempotency_key("k" * 256)


# -- an h11 "Illegal header value" never shows the value, and is not retried ---------------


@pytest.mark.anyio
async def test_illegal_header_value_is_one_line_without_the_value_and_not_retried() -> None:
    leak = httpx.LocalProtocolError(f"Illegal header value b'Bearer {SECRET}\\n'")
    rec = Recorder(leak)
    events: list[RetryEvent] = []
    async with make_client(rec, on_retry=events.append) as client:
        with pytest.raises(InvalidHeader) as info:
            await client.create_job({"event": "e"})
        stats = client.stats
    text = assert_one_clear_line(info.value)
    assert "was not sent" in text and "not shown" in text
    assert SECRET not in _all_text(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    # Not blamed on the network, not retried.
    assert len(rec.requests) == 1 and events == [] and stats.transport_errors == 0
    assert "network" not in text


@pytest.mark.anyio
async def test_header_encoding_errors_are_reported_without_the_value() -> None:
    rec = Recorder(httpx.Response(202))
    async with make_client(rec) as client:
        # Bypass the checks, as a bug would: httpx refuses to encode the header.
        call = Call("probe", "POST", "/bulk", idempotency_key="k\u00e9-secret-value")
        with pytest.raises(InvalidHeader) as info:
            await client._request(call)
    assert "secret-value" not in _all_text(info.value)
    assert rec.requests == []


# -- plain http ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "insecure"),
    [
        ("http://api.example.com", "k", True),
        ("http://10.0.0.5:8089", "k", True),
        ("http://api.example.com", None, False),
        ("https://api.example.com", "k", False),
        ("http://127.0.0.1:8089", "k", False),
        ("http://127.8.9.10", "k", False),
        ("http://localhost:8089", "k", False),
        ("http://emu.localhost", "k", False),
        ("http://[::1]:8089", "k", False),
    ],
)
def test_insecure_transport(url: str, key: str | None, insecure: bool) -> None:
    assert insecure_transport(url, key) is insecure
    warning = insecure_transport_warning(url, key)
    assert (warning is not None) is insecure
    if warning:
        assert "http://" in warning and "unencrypted" in warning
    client = CourierClient(Settings(base_url=url, api_key=key))
    assert client.insecure_transport is insecure


def test_loopback_hosts() -> None:
    assert is_loopback_host("LOCALHOST.")
    assert not is_loopback_host("localhost.example.com")
    assert not is_loopback_host("128.0.0.1")

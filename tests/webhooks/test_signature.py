"""courier-signature: parsing, verification against an independent HMAC, tolerance, properties."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.errors import BulkBatchError, Terminal
from bulkbatch.webhooks.errors import SignatureError
from bulkbatch.webhooks.signature import (
    SignatureVerifier,
    compute_signature,
    parse_signature_header,
    sign,
    verify_signature,
)
from tests.webhooks.helpers import SECRET, independent_signature

DOCS_HEADER = (
    "t=1631816343012,signature=33777cdae0468ff0939b3609d02d14e6e80ca093c2ea233455f0767055218875"
)
# Courier's docs (outbound-webhooks, "Step 3") sign `${t}.${JSON.stringify(examplePayload)}`.
DOCS_PAYLOAD = {
    "data": {
        "enqueued": 1631833955972,
        "event": "SNKDF4GZK94M0NHXBJQDF8GAQWM1",
        "id": "1-6143cf63-4f27670f6304f465462695f2",
        "providers": [],
        "recipient": "c156665c-a76c-4440-9676-f25c1b04ba93",
        "recipientId": "c156665c-a76c-4440-9676-f25c1b04ba93",
        "status": "ENQUEUED",
    },
    "type": "message:updated",
}


def test_the_documented_example_header_parses() -> None:
    parsed = parse_signature_header(DOCS_HEADER)
    assert parsed.timestamp == "1631816343012"
    assert parsed.timestamp_ms == 1631816343012
    assert parsed.signatures == (
        "33777cdae0468ff0939b3609d02d14e6e80ca093c2ea233455f0767055218875",
    )


def test_the_documented_algorithm_matches_an_independent_hmac() -> None:
    # JSON.stringify of the docs' payload: compact, keys in the order written.
    body = orjson.dumps(DOCS_PAYLOAD)
    t = "1631816343012"
    expected = independent_signature("docs-secret", t, body)
    assert compute_signature("docs-secret", t, body) == expected
    header = f"t={t},signature={expected}"
    assert verify_signature(header, body, "docs-secret", now=1631816343.012) == int(t)
    # the docs' prose omits the dot; the no-dot variant must not verify
    import hashlib
    import hmac

    no_dot = hmac.new(b"docs-secret", t.encode() + body, hashlib.sha256).hexdigest()
    with pytest.raises(SignatureError) as exc:
        verify_signature(f"t={t},signature={no_dot}", body, "docs-secret", now=1631816343.0)
    assert exc.value.reason == "mismatch"


def test_reserialised_json_does_not_verify() -> None:
    body = orjson.dumps(DOCS_PAYLOAD)
    header = sign(SECRET, body)
    spaced = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    with pytest.raises(SignatureError):
        verify_signature(header, spaced, SECRET)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("t=123", "malformed"),
        ("signature=" + "a" * 64, "malformed"),
        ("t=abc,signature=" + "a" * 64, "malformed"),
        ("t=1631816343012,signature=xyz", "malformed"),
        ("t=1631816343012,signature=" + "é" * 64, "malformed"),
        ("t=1,t=2,signature=" + "a" * 64, "malformed"),
        ("t=1631816343012,signature=" + "a" * 64 + "," * 5000, "malformed"),
    ],
)
def test_bad_headers_are_rejected_with_a_reason(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verify_signature(header, b"{}", SECRET)
    assert exc.value.reason == reason
    assert isinstance(exc.value, BulkBatchError)
    assert isinstance(exc.value, Terminal)
    if header:
        assert header not in str(exc.value)


def test_wrong_secret_is_a_mismatch_and_the_message_quotes_nothing() -> None:
    body = b'{"type":"message:updated","data":{}}'
    header = sign("other-secret", body)
    with pytest.raises(SignatureError) as exc:
        verify_signature(header, body, SECRET)
    assert exc.value.reason == "mismatch"
    assert SECRET not in str(exc.value)
    assert header.split("signature=")[1] not in str(exc.value)


def test_tolerance_accepts_old_retries_and_rejects_the_far_future() -> None:
    body = b"{}"
    now = time.time()
    two_days_ago = int((now - 2 * 86400) * 1000)
    assert verify_signature(sign(SECRET, body, two_days_ago), body, SECRET) == two_days_ago
    eight_days_ago = int((now - 8 * 86400) * 1000)
    with pytest.raises(SignatureError) as exc:
        verify_signature(sign(SECRET, body, eight_days_ago), body, SECRET)
    assert exc.value.reason == "expired"
    assert verify_signature(sign(SECRET, body, eight_days_ago), body, SECRET, max_age=None)
    ten_minutes_ahead = int((now + 600) * 1000)
    assert verify_signature(sign(SECRET, body, ten_minutes_ahead), body, SECRET)
    two_hours_ahead = int((now + 7200) * 1000)
    with pytest.raises(SignatureError) as exc:
        verify_signature(sign(SECRET, body, two_hours_ahead), body, SECRET)
    assert exc.value.reason == "future"


def test_seconds_timestamps_are_understood() -> None:
    body = b"{}"
    t = str(int(time.time()))
    header = f"t={t},signature={independent_signature(SECRET, t, body)}"
    assert verify_signature(header, body, SECRET) == int(t) * 1000


def test_rotation_any_secret_and_any_signature_matches() -> None:
    body = b'{"a":1}'
    verifier = SignatureVerifier(["new-secret", SECRET])
    assert verifier.verify(sign(SECRET, body), body)
    t = str(int(time.time() * 1000))
    good = independent_signature("new-secret", t, body)
    header = f"t={t},signature={'0' * 64},signature={good}"
    assert verifier.verify(header, body)
    assert "new-secret" not in repr(verifier)


def test_a_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        SignatureVerifier([])
    with pytest.raises(ValueError, match="secret"):
        SignatureVerifier([""])


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(min_size=1, max_size=64),
    body=st.binary(max_size=2048),
    t=st.integers(min_value=10**12, max_value=2 * 10**12),
)
def test_sign_then_verify_round_trips(secret: str, body: bytes, t: int) -> None:
    header = sign(secret, body, t)
    assert verify_signature(header, body, secret, max_age=None, now=t / 1000) == t
    ts, sig = header.split(",")
    assert sig == "signature=" + independent_signature(secret, ts[2:], body)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), body=st.binary(min_size=1, max_size=512))
def test_any_single_byte_tamper_fails(data: st.DataObject, body: bytes) -> None:
    t = 1_700_000_000_000
    header = sign(SECRET, body, t)
    i = data.draw(st.integers(0, len(body) - 1))
    delta = data.draw(st.integers(1, 255))
    tampered = body[:i] + bytes([(body[i] + delta) % 256]) + body[i + 1 :]
    with pytest.raises(SignatureError) as exc:
        verify_signature(header, tampered, SECRET, max_age=None, now=t / 1000)
    assert exc.value.reason == "mismatch"


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=256), pos=st.integers(0, 63), nibble=st.integers(1, 15))
def test_any_signature_digit_change_fails(body: bytes, pos: int, nibble: int) -> None:
    t = 1_700_000_000_000
    header = sign(SECRET, body, t)
    prefix, sig = header.split("signature=")
    flipped = sig[:pos] + format((int(sig[pos], 16) ^ nibble), "x") + sig[pos + 1 :]
    with pytest.raises(SignatureError):
        verify_signature(prefix + "signature=" + flipped, body, SECRET, max_age=None, now=t / 1e3)

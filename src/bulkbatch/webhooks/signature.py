"""Verify Courier's ``courier-signature`` header over the raw request body.

Courier signs an outbound webhook with HMAC-SHA256, keyed with the webhook's secret, over
the timestamp string, a literal ``.``, and the body::

    courier-signature: t=1631816343012,signature=33777cdae0468ff0939b3609d02d14e6e80ca093c2ea233455f0767055218875
    signature = hex(HMAC_SHA256(secret, t + "." + raw_body))

(The docs' prose names no separator, but their code uses the dot; see
``/work/shared/reference/courier-tracking.md`` §2.6.) The header is split on ``,``, each
element on its *first* ``=``; several ``signature=`` elements are accepted (any match wins),
as the docs mention "each of the received signatures". The MAC is computed over the bytes
exactly as received, never over re-serialised JSON, and compared with
:func:`hmac.compare_digest`.

Timestamp tolerance (a deliberate choice, see ``docs/webhooks.md``):

* **Age: accept up to 7 days by default** (``max_age``; ``None`` accepts any age). Courier
  retries a failed delivery for 24 hours (current docs) to 3 days (Oct 2024 docs), and
  whether a retry is re-signed with a fresh ``t`` is undocumented. Courier never retries a
  4xx, so a 401 for a "stale" but genuine retry loses that event for good. A 5-minute
  window, the usual advice, would do exactly that after a receiver outage. Replaying a
  captured genuine event gains an attacker nothing here: the store keeps duplicates and
  derives a message's state by status precedence, so an old event can never move a message
  backwards. Seven days covers the longest documented retry span with margin and still
  bounds how long a leaked request stays usable.
* **Future: reject more than 1 hour ahead** (``max_future``). Only Courier can produce a
  valid MAC, so a future ``t`` is a clock or unit error, not an attack; one hour tolerates
  any realistic clock skew while catching a wrong unit (microseconds) or garbage.
* **Unit:** the example is 13 digits (epoch milliseconds). A 10-digit value is read as
  seconds, as Hookdeck's verifier does, since the unit is not formally documented.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bulkbatch.webhooks.errors import SignatureError

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_FUTURE",
    "SIGNATURE_HEADER",
    "ParsedSignature",
    "SignatureVerifier",
    "compute_signature",
    "parse_signature_header",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "courier-signature"
DEFAULT_MAX_AGE: float | None = 7 * 24 * 3600.0
DEFAULT_MAX_FUTURE: float = 3600.0

_MAX_HEADER_CHARS = 2048
_MAX_SIGNATURES = 8
_HEX = frozenset("0123456789abcdef")
_SECONDS_BELOW = 100_000_000_000  # below this a timestamp has <= 11 digits: seconds, not ms


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    """A parsed ``courier-signature`` header.

    :param timestamp: ``t`` exactly as sent (it is part of the signed payload)
    :param timestamp_ms: ``t`` as epoch milliseconds (10-digit values are read as seconds)
    :param signatures: every ``signature=`` value, lower-cased 64-char hex
    """

    timestamp: str
    timestamp_ms: int
    signatures: tuple[str, ...]


def _malformed(what: str) -> SignatureError:
    return SignatureError("malformed", f"malformed courier-signature header: {what}")


def parse_signature_header(header: str | None) -> ParsedSignature:
    """Parse ``t=<ms>,signature=<hex>[,signature=<hex>...]``.

    Raises :class:`SignatureError` (``missing`` or ``malformed``); the message never quotes
    the header.
    """
    if header is None or not header.strip():
        raise SignatureError("missing", "no courier-signature header")
    if len(header) > _MAX_HEADER_CHARS:
        raise _malformed("too long")
    timestamp: str | None = None
    signatures: list[str] = []
    for element in header.split(","):
        key, sep, value = element.strip().partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "t":
            if timestamp is not None:
                raise _malformed("more than one t")
            timestamp = value
        elif key == "signature":
            signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise _malformed("t and signature are both required")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
        raise _malformed("t is not a decimal timestamp")
    if len(signatures) > _MAX_SIGNATURES:
        raise _malformed("too many signatures")
    for sig in signatures:
        if len(sig) != 64 or not _HEX.issuperset(sig):
            raise _malformed("signature is not 64 hex digits")
    value_ms = int(timestamp)
    if value_ms < _SECONDS_BELOW:
        value_ms *= 1000
    return ParsedSignature(timestamp, value_ms, tuple(signatures))


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def compute_signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The lower-case hex HMAC-SHA256 of ``timestamp + "." + body`` keyed with ``secret``."""
    mac = hmac.new(_key(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp_ms: int | None = None) -> str:
    """A ``courier-signature`` header value for ``body``, as Courier would send it.

    For tests, benchmarks and emulators; ``timestamp_ms`` defaults to now.
    """
    t = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    return f"t={t},signature={compute_signature(secret, t, body)}"


class SignatureVerifier:
    """Verifies requests against one or more secrets (more than one during a rotation).

    >>> verifier = SignatureVerifier(["whsec_example"])
    >>> header = sign("whsec_example", b"{}")
    >>> verifier.verify(header, b"{}") > 0
    True

    ``verify`` returns the signed timestamp in epoch ms or raises :class:`SignatureError`.
    The MAC is checked before the timestamp, so a wrong secret always reads ``mismatch``.
    """

    def __init__(
        self,
        secrets: Sequence[str | bytes],
        *,
        max_age: float | None = DEFAULT_MAX_AGE,
        max_future: float = DEFAULT_MAX_FUTURE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = [_key(s) for s in secrets]
        if not keys or any(not k for k in keys):
            raise ValueError("SignatureVerifier needs at least one non-empty secret")
        if max_age is not None and max_age <= 0:
            raise ValueError("max_age must be positive, or None for any age")
        if max_future < 0:
            raise ValueError("max_future must not be negative")
        self._keys = tuple(keys)
        self.max_age = max_age
        self.max_future = max_future
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"SignatureVerifier(secrets=<{len(self._keys)} hidden>, "
            f"max_age={self.max_age}, max_future={self.max_future})"
        )

    def verify(self, header: str | None, body: bytes, now: float | None = None) -> int:
        """Check ``header`` against ``body``; return the signed timestamp (epoch ms)."""
        parsed = parse_signature_header(header)
        prefix = parsed.timestamp.encode("ascii") + b"."
        matched = False
        for key in self._keys:
            mac = hmac.new(key, prefix, hashlib.sha256)
            mac.update(body)
            expected = mac.hexdigest()
            for candidate in parsed.signatures:
                # no short-circuit: every pair is compared in constant time
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureError("mismatch", "courier-signature does not match the body")
        self._check_time(parsed.timestamp_ms, self._clock() if now is None else now)
        return parsed.timestamp_ms

    def _check_time(self, timestamp_ms: int, now: float) -> None:
        age = now - timestamp_ms / 1000.0
        if self.max_age is not None and age > self.max_age:
            raise SignatureError(
                "expired",
                f"courier-signature timestamp is {age:.0f}s old (tolerance {self.max_age:.0f}s)",
            )
        if -age > self.max_future:
            raise SignatureError(
                "future",
                f"courier-signature timestamp is {-age:.0f}s in the future "
                f"(tolerance {self.max_future:.0f}s); check the clocks",
            )


def verify_signature(
    header: str | None,
    body: bytes,
    secret: str | bytes,
    *,
    max_age: float | None = DEFAULT_MAX_AGE,
    max_future: float = DEFAULT_MAX_FUTURE,
    now: float | None = None,
) -> int:
    """One-shot :meth:`SignatureVerifier.verify` with a single secret."""
    verifier = SignatureVerifier([secret], max_age=max_age, max_future=max_future)
    return verifier.verify(header, body, now)

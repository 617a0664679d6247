"""Header hygiene: the API key, Idempotency-Keys, and where the key may be sent.

* :func:`clean_api_key` strips surrounding whitespace (a CRLF ``.env`` file, a secret file
  with a trailing newline) and refuses any other control or non-ASCII character at once,
  with a message that names the character's position and kind but never the key.
* :func:`check_idempotency_key` refuses an ``Idempotency-Key`` that is not printable ASCII.
* :func:`insecure_transport` says whether the key would travel over plain ``http://`` to a
  host that is not this machine (the CLI warns; library code never prints).

HTTP header values are bytes 0x20-0x7E plus tab (RFC 9110 allows obs-text above 0x7F, but
h11 and most servers do not); anything else makes h11 raise "Illegal header value b'...'",
an error whose text *is* the value. These checks run before a request is built, so that
error can only come from a bug, and :mod:`bulkbatch.client._http` still catches it and
drops the value.
"""

from __future__ import annotations

import ipaddress
import unicodedata

import httpx

from bulkbatch.errors import InvalidApiKey, InvalidHeader

__all__ = [
    "KEY_SETTING",
    "check_idempotency_key",
    "clean_api_key",
    "insecure_transport",
    "insecure_transport_warning",
    "is_loopback_host",
]

KEY_SETTING = "COURIER_API_KEY (or --api-key)"
_STRIP = " \t\r\n"
_MAX_IDEMPOTENCY_KEY = 255


def _describe(char: str) -> str:
    code = f"U+{ord(char):04X}"
    name = unicodedata.name(char, "")
    if unicodedata.category(char).startswith("C"):
        kind = "a control character"
    elif char.isspace():
        kind = "a whitespace character"
    else:
        kind = "a non-ASCII character"
    return f"{kind} ({code}{' ' + name if name else ''})"


def _bad_char(value: str) -> tuple[int, str] | None:
    """The first character (1-based position, description) no header can carry, if any."""
    for position, char in enumerate(value, 1):
        if not " " <= char <= "~":
            return position, _describe(char)
    return None


def clean_api_key(key: str | None) -> str | None:
    """The key with surrounding whitespace removed; ``None`` when nothing is left.

    :raises InvalidApiKey: the key holds a control or non-ASCII character inside it; the
        message says where and which kind, never the key itself
    """
    if key is None:
        return None
    cleaned = key.strip(_STRIP)
    if not cleaned:
        return None
    bad = _bad_char(cleaned)
    if bad is not None:
        position, what = bad
        raise InvalidApiKey(
            f"The Courier API key has {what} at position {position} of {len(cleaned)}, which "
            f"cannot be sent in an HTTP header; the key was not used and is not shown. Copy it "
            f"again from Courier's settings into {KEY_SETTING}."
        )
    return cleaned


def check_idempotency_key(key: str) -> str:
    """``key`` if it can be an ``Idempotency-Key`` header: 1-255 printable ASCII characters.

    :raises InvalidHeader: otherwise (the pipeline builds ASCII keys; this is the guard)
    """
    if not isinstance(key, str) or not key:
        raise InvalidHeader("An Idempotency-Key must be a non-empty string.")
    bad = _bad_char(key)
    if bad is not None:
        position, what = bad
        raise InvalidHeader(
            f"The Idempotency-Key {ascii(key)[:120]} has {what} at position {position}; "
            "HTTP headers carry printable ASCII only. Build keys from ASCII (e.g. hex or "
            "percent-encode the parts)."
        )
    if len(key) > _MAX_IDEMPOTENCY_KEY:
        raise InvalidHeader(
            f"The Idempotency-Key is {len(key)} characters long; keep it to "
            f"{_MAX_IDEMPOTENCY_KEY} or fewer."
        )
    return key


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_transport(base_url: str, api_key: str | None) -> bool:
    """True when ``api_key`` would be sent over plain ``http://`` to a non-loopback host."""
    if not api_key:
        return False
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        return False
    return url.scheme == "http" and not is_loopback_host(url.host)


def insecure_transport_warning(base_url: str, api_key: str | None) -> str | None:
    """The warning line for :func:`insecure_transport`, or ``None`` when there is nothing to say."""
    if not insecure_transport(base_url, api_key):
        return None
    host = httpx.URL(base_url).host
    return (
        f"COURIER_BASE_URL is plain http:// to {host}: the API key will cross the network "
        "unencrypted. Use https:// unless this is a trusted local proxy."
    )

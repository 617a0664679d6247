"""Database URLs without their passwords: what messages show and what a run may store.

A ``--once-per-ledger postgresql://user:secret@host/db`` URL carries a password. It is used to
connect and kept in memory, never printed, logged or written: messages show
:func:`redact_url` (``user:***@``), ``state.json`` stores :func:`location_of` (no password at
all; a resumed run gets it from ``PGPASSWORD`` or ``~/.pgpass``, as libpq does). Plain string
work, no database driver: the spec and the ledger both use it.
"""

from __future__ import annotations

import re

__all__ = ["URL_SCHEMES", "is_postgres_url", "location_of", "redact_url", "scrub"]

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(text: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return text.lower().startswith(URL_SCHEMES)


def _split_userinfo(url: str) -> tuple[str, str, str, str] | None:
    """``(scheme://, user, password, rest after '@')`` when the URL has a password.

    The user information ends at the last ``@`` before the path (libpq's own rule, widened
    so that an unencoded ``@`` or ``?`` inside a password is still covered), else at the last
    ``@`` before the query string (an unencoded ``/`` inside a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    head = rest.split("/", 1)[0]
    at = head.rfind("@")
    if at < 0:
        at = rest.split("?", 1)[0].rfind("@")
    if at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon:
        return None
    return scheme + sep, user, password, rest[at + 1 :]


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact_url(url: str) -> str:
    """``url`` with its password (in the user information or a ``password=`` parameter)
    replaced by ``***``: what every message and log line shows of a database URL."""
    parts = _split_userinfo(url)
    if parts is not None:
        scheme, user, _, rest = parts
        url = f"{scheme}{user}:***@{rest}"
    if "://" not in url:
        return _KV_PASSWORD.sub(r"\1***", url)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def location_of(url: str) -> str:
    """``url`` with no password at all: what a run may record (``state.json``) and use to
    open the database again (the password then comes from memory, PGPASSWORD or ~/.pgpass)."""
    parts = _split_userinfo(url)
    if parts is not None:
        scheme, user, _, rest = parts
        url = f"{scheme}{user}@{rest}" if user else f"{scheme}{rest}"
    url = re.sub(r"(?i)([?&])password=[^&#]*&?", r"\1", url)
    return url.rstrip("?&")


def _passwords(url: str) -> list[str]:
    """Every form the URL's password may take in a message (raw and percent-decoded)."""
    from urllib.parse import unquote

    found = [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(url)]
    parts = _split_userinfo(url)
    if parts is not None:
        found.append(parts[2])
    return sorted({p for q in found for p in (q, unquote(q)) if p}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` on one line, with no trace of ``url``'s password."""
    for password in _passwords(url):
        text = text.replace(password, "***")
    return " ".join(text.split())

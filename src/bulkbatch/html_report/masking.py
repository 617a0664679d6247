"""Personal data out of the page: e-mail addresses and phone numbers masked, also inside
free text such as reject reasons."""

from __future__ import annotations

import re

_EMAIL_RE = re.compile(r"[^\s\"'<>@,;:()\[\]]*@[^\s\"'<>,;()\[\]]*")
_PHONE_RE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_QUOTED_RE = re.compile(r"\"([^\"]*)\"")


def mask_email(value: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com`` (the domain stays, the person goes)."""
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain}"


def _mask_phone(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    return "***" + digits[-2:]


def mask_value(value: object, column: str = "") -> str:
    """A key-column value as the report may show it: e-mails and phone numbers masked.

    A value in a column named like ``*mail*`` or ``*phone*`` is always masked, valid or not;
    ``email:``/``phone:`` recipients keep their prefix. Other values (user ids, list ids) are
    shown as they are: they are the keys already in ``results.parquet``.
    """
    if value is None:
        return ""
    text = str(value)
    name = column.lower()
    if "mail" in name and "@" not in text:
        return f"{text[:1]}***" if text else ""
    if "phone" in name:
        return _mask_phone(text) if text else ""
    for prefix in ("email:", "phone:"):
        if text.startswith(prefix):
            return prefix + mask_value(text[len(prefix) :])
    if "@" in text:
        return mask_email(text)
    if _PHONE_RE.fullmatch(text.strip()):
        return _mask_phone(text)
    return text


def mask_text(text: str) -> str:
    """Free text (a reject reason, an error) with quoted values, e-mails and phones masked."""

    def quoted(m: re.Match[str]) -> str:
        inner = m.group(1)
        if "@" in inner or _PHONE_RE.fullmatch(inner.strip()):
            return f'"{mask_value(inner)}"'
        return f'"{inner[:1]}***"' if inner else '""'

    text = _QUOTED_RE.sub(quoted, text)
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: _mask_phone(m.group(0)), text)

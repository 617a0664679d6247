"""Opaque paging cursors: a JSON key, base64url-encoded without padding."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from bulkbatch.emulator.rules import ValidationError

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(obj: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


def decode_cursor(text: str) -> Any:
    """The key of a cursor; a cursor that is not one is the API's 400."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValidationError(f"Invalid cursor {text!r}.") from None

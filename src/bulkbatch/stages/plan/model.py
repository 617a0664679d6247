"""The plan's options, reason codes and the inline-content variable scan."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bulkbatch.options import option
from bulkbatch.spec import ADDRESS_TARGETS

__all__ = [
    "ADDRESS_TARGETS",
    "EMAIL_REGEX",
    "REASONS",
    "SCIENTIFIC_REGEX",
    "PlanOptions",
    "content_variables",
]

REASONS: dict[str, str] = {
    "filtered": f"excluded by {option('where').flag} (or {option('sql').flag})",
    "no_address": "no address: user_id, email, phone_number and list_id are all empty",
    "bad_user_id": (
        "the user_id is a number in scientific notation (1.23457E+11, as Excel saves long "
        "numbers), so its last digits are lost"
    ),
    "bad_email": "does not look like an e-mail address",
    "bad_phone": (
        "phone number has fewer than 7 or more than 15 digits, or is in scientific notation"
    ),
    "bad_json": (
        "the data/preferences column is not a JSON object, nests too deep, or holds NaN, "
        "Infinity or a trailing comma"
    ),
    "too_large": "the user's JSON is over the size limit (max_user_bytes)",
    "bad_row": "a CSV line that could not be parsed (too many or too few fields, a stray quote)",
}
"""The stable reason codes and what they mean (the per-row ``reason`` adds the value)."""

SCIENTIFIC_REGEX = r"[0-9](\.[0-9]+)?[eE]\+[0-9]+"
"""A number in scientific notation, as Excel saves one of 12 or more digits from a General
column (``1.23457E+11``) and as a float past 2**53 prints (``1e+16``): not the id or phone
number it was, and distinct ones collapse into one."""

EMAIL_REGEX = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$"
"""No space, no control character (a NUL byte is not an address), one @, a dot after it."""


@dataclass(frozen=True)
class PlanOptions:
    """What to send and how to cut it; see :mod:`bulkbatch.stages.plan` for the rules.

    Values are checked against :data:`bulkbatch.options.OPTIONS` when built (the same rules
    and wording as the command line).
    """

    content: Mapping[str, Any] | None = None
    """Inline content: its ``{{var}}`` names are checked against users' data."""
    locale: str | None = None
    """Each user's ``to.locale`` unless the row has one."""
    channel: str | None = "email"
    """The expected channel: a pre-flight hint (which address users need), never sent."""
    data: Mapping[str, Any] = field(default_factory=dict)
    mapping: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    sql: str | None = None
    dedupe: Literal["first", "last", "fail"] = "first"
    batch_size: int = 1000
    max_job_size: int | None = None
    """Users per job; ``None`` or 0: one job for everyone."""
    max_user_bytes: int = 100_000
    shard: tuple[int, int] | None = None
    """``(index, count)``: plan only the rows of this shard (rules: :mod:`.shard`)."""

    def __post_init__(self) -> None:
        for name in ("channel", "dedupe", "batch_size", "max_job_size", "max_user_bytes"):
            option(name).check(getattr(self, name))


_VAR = re.compile(r"\{\{\s*([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\s*\}\}")


def content_variables(content: Any) -> list[str]:
    """The ``{{var}}`` names used anywhere in inline content, in first-use order."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for name in _VAR.findall(value):
                if name not in found and name != "else":
                    found.append(name)
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(content)
    return found

"""The emulator's rules as pure functions: errors, progression, routing, data merge, rendering.

No SQL and no HTTP here; :mod:`.backend` stores what these decide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from bulkbatch.emulator.faults import EmulatorConfigError

__all__ = [
    "CHANNELS",
    "DAY_MS",
    "YEAR_MS",
    "ApiError",
    "Progression",
    "ValidationError",
    "as_dict",
    "content_text",
    "merged_data",
    "not_found",
    "parse_expiration",
    "parse_routes",
    "render",
    "user_outcome",
]

JsonDict = dict[str, Any]

DAY_MS = 24 * 3600 * 1000
YEAR_MS = 365 * DAY_MS
PROGRESSION_FORM = "'immediate', 'polls:N' (N an integer >= 1) or 'seconds:T' (T a number >= 0)"
# ChannelClassification in the spec.
CHANNELS = ("direct_message", "email", "push", "sms", "webhook", "inbox")


class ApiError(Exception):
    """An API-shaped error: HTTP status plus the ``{message, type}`` envelope."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type

    def envelope(self) -> JsonDict:
        return {"message": self.message, "type": self.type}


class ValidationError(ApiError):
    """A 400 raised before the endpoint started executing (never saved for idempotency)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, "invalid_request_error")


def not_found() -> ApiError:
    return ApiError(404, "Not Found", "invalid_request_error")


@dataclass(frozen=True)
class Progression:
    """How a run job and its messages advance: ``immediate``, ``polls:N`` or ``seconds:T``."""

    mode: Literal["immediate", "polls", "seconds"] = "polls"
    polls: int = 2
    seconds: float = 0.0

    @classmethod
    def parse(cls, value: str | Progression) -> Progression:
        if isinstance(value, Progression):
            return value
        text = value.strip()
        if text == "immediate":
            return cls("immediate")
        kind, sep, arg = text.partition(":")
        try:
            if sep and kind == "polls":
                n = int(arg)
                if n >= 1:
                    return cls("polls", polls=n)
            elif sep and kind == "seconds":
                t = float(arg)
                if t == 0:
                    return cls("immediate")
                if t > 0 and t < float("inf"):
                    return cls("seconds", seconds=t)
        except ValueError:
            pass
        raise EmulatorConfigError(f"bad progression {value!r}: expected {PROGRESSION_FORM}")

    def __str__(self) -> str:
        if self.mode == "polls":
            return f"polls:{self.polls}"
        if self.mode == "seconds":
            return f"seconds:{self.seconds:g}"
        return "immediate"

    @property
    def step_ms(self) -> int:
        return max(1, round(self.seconds * 1000))


_TEMPLATE_VAR = re.compile(r"\{\{\s*([\w.\-]+)\s*\}\}")


def parse_expiration(value: str, now_ms: int) -> int:
    """Parse ``x-idempotency-expiration`` into an absolute epoch-ms expiry.

    Accepts epoch milliseconds, epoch seconds (values below 10^11), ISO-8601, or a duration
    like ``"2 days"``/``"36 hours"``. The result is clamped to [now + 24 h, now + 1 year].
    """
    text = value.strip()
    expires: int
    duration = re.fullmatch(r"(\d+)\s*(day|days|hour|hours|d|h)", text, re.IGNORECASE)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        number = float(text)
        expires = int(number * 1000) if number < 1e11 else int(number)
    elif duration:
        unit = 24 * 3600_000 if duration.group(2).lower().startswith("d") else 3600_000
        expires = now_ms + int(duration.group(1)) * unit
    else:
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"Invalid x-idempotency-expiration {value!r}: expected epoch milliseconds "
                "or an ISO-8601 date."
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        expires = int(parsed.timestamp() * 1000)
    return min(max(expires, now_ms + DAY_MS), now_ms + YEAR_MS)


def as_dict(value: object) -> JsonDict:
    return value if isinstance(value, dict) else {}


ROUTE_FORM = "EVENT=CHANNEL[,CHANNEL...] with CHANNEL one of " + ", ".join(CHANNELS)


def parse_routes(specs: Iterable[str] | Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    """``["welcome=sms,email", ...]`` (or a mapping) → ``{"welcome": ["sms", "email"]}``.

    Raises :class:`EmulatorConfigError` naming the bad value and the form.
    """
    if specs is None:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(specs, Mapping):
        pairs = [(event, ",".join(channels)) for event, channels in specs.items()]
    else:
        for spec in specs:
            event, sep, channels = spec.partition("=")
            if not sep:
                raise EmulatorConfigError(f"bad route {spec!r}: expected {ROUTE_FORM}")
            pairs.append((event, channels))
    routes: dict[str, list[str]] = {}
    for event, channels in pairs:
        names = [c.strip() for c in channels.split(",") if c.strip()]
        bad = [c for c in names if c not in CHANNELS]
        if not event.strip() or not names or bad:
            raise EmulatorConfigError(f"bad route {event}={channels!r}: expected {ROUTE_FORM}")
        routes[event.strip()] = names
    return routes


def job_channels(
    message: Mapping[str, Any], routes: Mapping[str, list[str]], flavor: str
) -> list[str]:
    """The channels a job's messages are routed over, as Courier routes by notification.

    The emulator's own event config (``--route``) by the job's template, else its event;
    ``["email"]`` for anything not configured. In the ``tutorial`` flavor the nested V2
    ``message.message.routing.channels`` (a legacy send message) is honoured first.
    """
    nested = as_dict(message.get("message"))
    if flavor == "tutorial":
        channels = as_dict(nested.get("routing")).get("channels")
        if isinstance(channels, list):
            found = [c for c in channels if isinstance(c, str)]
            if found:
                return found
    for key in (message.get("template"), nested.get("template"), message.get("event")):
        if isinstance(key, str) and key in routes:
            return list(routes[key])
    return ["email"]


def user_outcome(user: Mapping[str, Any], channels: Iterable[str]) -> tuple[str, str | None]:
    """Decide a user's fate at ingest: ``(outcome, channel)``.

    ERROR when ``profile``, ``data`` or ``to`` is present, not null and not a JSON object.
    Otherwise the first routable channel of the job wins: ``email`` needs ``profile.email``,
    ``sms`` needs ``profile.phone_number``, ``push``/``inbox``/``direct_message``/``webhook``
    need a recipient (always present). None routable → UNROUTABLE. An email whose domain is or ends
    in ``.invalid`` → UNDELIVERABLE. Everything else → DELIVERED.
    """
    profile, data, to = user.get("profile"), user.get("data"), user.get("to")
    for part in (profile, data, to):
        if part is not None and not isinstance(part, dict):
            return "ERROR", None
    profile_d = profile or {}
    for channel in channels:
        if channel == "email":
            email = profile_d.get("email")
            if isinstance(email, str) and email:
                domain = email.rpartition("@")[2].strip().lower().rstrip(".")
                if domain == "invalid" or domain.endswith(".invalid"):
                    return "UNDELIVERABLE", "email"
                return "DELIVERED", "email"
        elif channel == "sms":
            phone = profile_d.get("phone_number")
            if isinstance(phone, str) and phone:
                return "DELIVERED", "sms"
        elif channel in ("push", "inbox", "direct_message", "webhook"):
            return "DELIVERED", channel
    return "UNROUTABLE", None


def merged_data(definition: Mapping[str, Any], user: Mapping[str, Any]) -> JsonDict:
    """``{...message.data, ...message.message.data, ...user.data, ...user.to.data}``."""
    out: JsonDict = {}
    out.update(as_dict(definition.get("data")))
    out.update(as_dict(as_dict(definition.get("message")).get("data")))
    out.update(as_dict(user.get("data")))
    out.update(as_dict(as_dict(user.get("to")).get("data")))
    return out


def render(text: str, data: Mapping[str, Any]) -> str:
    """Replace ``{{var}}`` / ``{{a.b}}`` with values from ``data``; missing → empty string."""

    def lookup(match: re.Match[str]) -> str:
        value: Any = data
        for part in match.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                return ""
            value = value[part]
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        return orjson.dumps(value).decode()

    return _TEMPLATE_VAR.sub(lookup, text)


def content_text(content: object) -> tuple[str, str]:
    """``(title, body)`` of ElementalContentSugar ``{title, body}`` or ``{elements: [...]}``."""
    if not isinstance(content, dict):
        return "", ""
    if "elements" in content and isinstance(content["elements"], list):
        title, bodies = "", []
        for element in content["elements"]:
            if not isinstance(element, dict):
                continue
            if element.get("type") == "meta" and isinstance(element.get("title"), str):
                title = element["title"]
            elif element.get("type") == "text" and isinstance(element.get("content"), str):
                bodies.append(element["content"])
        return title, "\n".join(bodies)
    sugar_title, sugar_body = content.get("title"), content.get("body")
    return (
        sugar_title if isinstance(sugar_title, str) else "",
        sugar_body if isinstance(sugar_body, str) else "",
    )

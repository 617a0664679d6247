"""The run spec: what one campaign instance sends, to whom, how fast, and what it tracks.

A :class:`RunSpec` is built once — from flags (the CLI), keys (a TOML run file) or keywords
(``bulkbatch.send(...)``) — validated where it is built, frozen, stored in ``state.json`` with
:meth:`RunSpec.to_json` and read back with :meth:`RunSpec.from_json`, so ``resume`` restores
every option that decides outcome or exit code. The API key is never part of it.

Four parts, named after what they decide:

* :class:`Campaign` — the job Courier gets (:meth:`Campaign.message` is the ``POST /bulk`` body);
* :class:`Audience` — which rows, how they are read and mapped to users;
* :class:`Sending` — batch and job sizes, pace, timeouts;
* :class:`Tracking` — waiting, delivery statuses, what results keep;

plus the run's own fields (instance name, run directory, once-per key, exit policy).
Every field's flag, help and wording is in :data:`bulkbatch.options.OPTIONS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from bulkbatch.config import MAX_BATCH_SIZE
from bulkbatch.dburl import is_postgres_url, location_of
from bulkbatch.errors import UsageError
from bulkbatch.options import OPTIONS, Option, option

__all__ = [
    "ADDRESS_TARGETS",
    "MAX_JSON_DEPTH",
    "MAX_SHARDS",
    "Audience",
    "Campaign",
    "RunSpec",
    "Sending",
    "Tracking",
    "json_depth",
    "parse_json_option",
    "parse_map_option",
    "parse_shard",
]

MAX_JSON_DEPTH = 64
"""Deepest JSON nesting bulkbatch sends. Courier-side parsers refuse very deep documents (a
2,000-level object made it refuse a whole batch), and Python's own JSON tools recurse, so
deeper global data is refused up front and deeper per-user data is rejected as ``bad_json``."""

Dedupe = Literal["first", "last", "fail"]

ADDRESS_TARGETS = ("to.user_id", "profile.email", "profile.phone_number", "to.list_id")
"""The user fields that make a recipient; a row needs one of them."""

SHORT_TARGETS: dict[str, str] = {
    "user_id": "to.user_id",
    "email": "profile.email",
    "phone_number": "profile.phone_number",
    "phone": "profile.phone_number",
    "locale": "to.locale",
    "tenant_id": "to.tenant_id",
    "list_id": "to.list_id",
    "data": "data",
    "preferences": "preferences",
}
MAP_PREFIXES = ("data.", "profile.", "to.")
_ELEMENTAL_TYPES = frozenset(["text", "meta", "channel", "image", "action", "divider", "quote"])


# -- parsing raw option values ---------------------------------------------------------------


def json_depth(value: object, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), counted without recursion and
    stopping once past ``limit`` (so a 10,000-level value costs nothing extra)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def _read_json_text(opt: Option, text: str) -> tuple[str, str]:
    """The JSON text of an option value (``@file`` read) and how to name it in messages."""
    if not text.startswith("@"):
        return text, opt.flag
    path = Path(text[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8-sig"), f"{opt.flag} file {path}"
    except FileNotFoundError:
        raise UsageError(f"{opt.flag} file not found: {path}. Check the path after '@'.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{opt.flag} file {path} cannot be read: {exc}. Pass a UTF-8 JSON file."
        ) from None


def parse_json_option(name: str, text: str) -> dict[str, Any]:
    """A JSON-object option (``--data``, ``--content``, ``--override``): JSON text or ``@FILE``.

    :raises UsageError: the file is missing, the text is not a JSON object, or it nests
        deeper than :data:`MAX_JSON_DEPTH`; the message names the option and the fix
    """
    opt = option(name)
    text, where = _read_json_text(opt, text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            f"Pass a JSON object, e.g. {opt.flag} " + """'{"promo": "SPRING"}', or @file.json."""
        ) from None
    except RecursionError:
        raise UsageError(
            f"{where} nests deeper than {MAX_JSON_DEPTH} levels; Courier refuses such JSON. "
            "Flatten it."
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{where} must be a JSON object, not {type(value).__name__}. Wrap the values in "
            f"an object, e.g. {opt.flag} " + """'{"promo": "SPRING"}'."""
        )
    check_depth(opt, value, where)
    return value


def _non_finite(value: object) -> tuple[str, str] | None:
    """(how JSON-ish text spells it, its path) of the first NaN or infinity in a decoded
    value, or None. Python's json reads ``NaN`` and ``Infinity``; orjson writes them as null."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return ("NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"), path
        if isinstance(item, dict):  # pushed in reverse: the first in document order wins
            pairs = [(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()]
            stack.extend(reversed(pairs))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(item)]))
    return None


def check_depth(opt: Option, value: object, where: str | None = None) -> None:
    """Refuse a JSON value nested deeper than :data:`MAX_JSON_DEPTH`, or holding a NaN or an
    infinity (which JSON does not have)."""
    found = _non_finite(value)
    if found is not None:
        raise UsageError(
            f"{where or opt.flag} holds {found[0]} at {orjson.dumps(found[1]).decode()}, which "
            "JSON does not have (Courier refuses it). Give a number, a string or null."
        )
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise UsageError(
            f"{where or opt.flag} nests {depth if depth <= MAX_JSON_DEPTH + 1 else 'over'} "
            f"{MAX_JSON_DEPTH} levels deep; Courier refuses such JSON. Flatten it."
        )


def normalise_target(target: str) -> str | None:
    """A ``--map`` target in its long form (``email`` -> ``profile.email``), or None."""
    t = target.strip()
    low = t.lower()
    if low in SHORT_TARGETS:
        return SHORT_TARGETS[low]
    for prefix in MAP_PREFIXES:
        if low.startswith(prefix) and len(t) > len(prefix):
            rest = t[len(prefix) :]
            if all(part for part in rest.split(".")):
                return prefix + rest
    return None


def parse_map_option(values: Iterable[str]) -> dict[str, str]:
    """``--map TARGET=COLUMN`` items as ``{target: column}`` (short targets normalised,
    e.g. ``user_id`` -> ``to.user_id``).

    :raises UsageError: an item is not ``TARGET=COLUMN``, names an unknown target, or a target
        is given twice
    """
    flag = option("mapping").flag
    out: dict[str, str] = {}
    for item in values:
        target, sep, column = item.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise UsageError(
                f"Bad {flag} {item!r}: use TARGET=COLUMN, e.g. {flag} to.user_id=customer_id."
            )
        norm = normalise_target(target)
        if norm is None:
            raise UsageError(
                f"Unknown {flag} target {target.strip()!r}: use user_id, email, phone_number, "
                "locale, tenant_id, list_id, data, preferences, or data.NAME, profile.NAME "
                "or to.NAME."
            )
        if norm in out:
            raise UsageError(
                f"{flag} {norm} is given twice ({out[norm]} and {column.strip()}); keep one."
            )
        out[norm] = column.strip()
    return out


def check_content(content: Mapping[str, Any]) -> None:
    """Refuse inline content that matches neither Elemental form of Courier's ``Content``
    schema (``{title, body}`` or ``{version, elements: [{type: ...}]}``).

    Written by hand rather than with a JSON-schema library: it is two shapes, the client must
    not load the emulator's copy of the spec, and the contract tests check the full schema.
    """
    flag = option("content").flag
    if "elements" in content or "version" in content:
        if not isinstance(content.get("version"), str):
            raise UsageError(f'{flag} needs "version" as a string, e.g. "2022-01-01".')
        elements = content.get("elements")
        if not isinstance(elements, list):
            raise UsageError(f'{flag} needs "elements" as a list of Elemental nodes.')
        for i, node in enumerate(elements):
            kind = node.get("type") if isinstance(node, dict) else None
            if kind not in _ELEMENTAL_TYPES:
                raise UsageError(
                    f"{flag} elements[{i}] has type {kind!r}; use one of "
                    f"{', '.join(sorted(_ELEMENTAL_TYPES))}."
                )
        return
    missing = [k for k in ("title", "body") if not isinstance(content.get(k), str)]
    if missing:
        raise UsageError(
            f'{flag} must be Elemental content: {{"title": ..., "body": ...}} (strings) or '
            f'{{"version": ..., "elements": [...]}}; {" and ".join(missing)} '
            f"{'is' if len(missing) == 1 else 'are'} missing or not text."
        )


# -- the spec ----------------------------------------------------------------------------------


def _checked(obj: object) -> None:
    """Check every field of a spec part against its option's rules."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        opt = OPTIONS.get(f.name)
        if opt is not None:
            opt.check(getattr(obj, f.name))


@dataclass(frozen=True)
class Campaign:
    """What Courier is asked to send: the bulk job's definition."""

    event: str | None = None
    template: str | None = None
    content: Mapping[str, Any] | None = None
    brand: str | None = None
    locale: str | None = None
    override: Mapping[str, Any] | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    channel: str | None = "email"

    def __post_init__(self) -> None:
        _checked(self)
        if self.channel == "none":
            object.__setattr__(self, "channel", None)
        for name in ("data", "content", "override"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise option(name).invalid(value, "must be a JSON object")
            if value:
                check_depth(option(name), value)
        if self.content:
            check_content(self.content)

    @property
    def event_id(self) -> str:
        """The ``event`` sent: the event, else the template id (Courier accepts a
        notification id as the event)."""
        event = self.event or self.template
        if not event:
            ev, tpl = option("event").flag, option("template").flag
            raise UsageError(
                f"No message to send: pass {ev} EVENT (a Courier event or notification id) "
                f"or {tpl} ID; Courier requires an event on every bulk job"
                + (f" (also with {option('content').flag})." if self.content else ".")
            )
        return event

    def message(self) -> dict[str, Any]:
        """The ``message`` of ``POST /bulk``: only fields Courier's current schema documents.

        The locale goes to each user's ``to.locale`` (plan does that), never to the job's
        ``locale`` (an object of per-locale objects); no routing is sent (Courier routes by
        the template, or ``override``).
        """
        msg: dict[str, Any] = {"event": self.event_id}
        if self.template:
            msg["template"] = self.template
        if self.brand:
            msg["brand"] = self.brand
        if self.data:
            msg["data"] = dict(self.data)
        if self.content:
            msg["content"] = dict(self.content)
        if self.override:
            msg["override"] = dict(self.override)
        return msg


MAX_SHARDS = 4096


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N <= MAX_SHARDS``.

    :raises UsageError: naming ``--shard`` and what a good value looks like
    """
    index, sep, count = text.strip().partition("/")
    example = "e.g. 0/4 for the first of four shards (shards count from 0)"
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise option("shard").invalid(text, f"is not I/N; {example}")
    i, n = int(index), int(count)
    if not 1 <= n <= MAX_SHARDS:
        raise option("shard").invalid(text, f"needs N from 1 to {MAX_SHARDS}; {example}")
    if i >= n:
        raise option("shard").invalid(text, f"needs I below N: shards of {n} are 0 to {n - 1}")
    return i, n


@dataclass(frozen=True)
class Audience:
    """Who: the inputs, how they are read, filtered, mapped and deduplicated."""

    sources: tuple[str, ...] = ()
    format: str = "auto"
    delimiter: str | None = None
    quote: str | None = None
    encoding: str | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    sql: str | None = None
    dedupe: Dedupe = "first"
    max_user_bytes: int = 100_000

    def __post_init__(self) -> None:
        _checked(self)
        if self.where is not None and self.sql is not None:
            w, s = option("where").flag, option("sql").flag
            raise UsageError(f"Pass {w} or {s}, not both: {w} filters, {s} selects.")


@dataclass(frozen=True)
class Sending:
    """How: batch and job sizes, pace and timeouts."""

    batch_size: int = MAX_BATCH_SIZE
    max_job_size: int | None = None
    """None: sized from the rows once loaded; 0: one job for everyone."""
    rate: float | None = None
    """None here and below: the :class:`~bulkbatch.config.Settings` value applies (unknown
    rate: adapt to 429s; 32 writes in flight; 30 s HTTP timeout; 1 s most between polls; 8 tries
    per request, at most 30 s apart)."""
    concurrency: int | None = None
    http_timeout: float | None = None
    poll_interval: float | None = None
    max_attempts: int | None = None
    max_backoff: float | None = None

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class Tracking:
    """After sending: wait for the jobs, fetch delivery statuses, what results keep."""

    wait: bool = True
    timeout: float | None = None
    messages: bool = False
    include_profile: bool = False

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True)
class RunSpec:
    """One campaign instance, complete: everything a run needs except the API key."""

    campaign: Campaign = field(default_factory=Campaign)
    audience: Audience = field(default_factory=Audience)
    sending: Sending = field(default_factory=Sending)
    tracking: Tracking = field(default_factory=Tracking)
    run_id: str | None = None
    shard: str | None = None
    """``"I/N"``: only shard I of N (see :attr:`shard_of`)."""
    once_per: str | None = None
    once_per_ledger: str | None = None
    fail_on_rejects: bool = False
    max_reject_rate: float | None = None
    base_url: str | None = None
    """Where the run was started against (bound for good at the first request)."""

    def __post_init__(self) -> None:
        _checked(self)
        if self.run_id is not None and not self.run_id.strip():
            raise option("run_id").invalid(self.run_id, "is empty; give a name or leave it out")
        if self.once_per is not None and not self.once_per.strip():
            raise option("once_per").invalid(self.once_per, "is empty; give a key")
        if self.shard is not None:  # one spelling, so " 1/4" and "1/4" are one campaign
            i, n = parse_shard(self.shard)
            object.__setattr__(self, "shard", f"{i}/{n}")

    @property
    def shard_of(self) -> tuple[int, int] | None:
        """``(index, count)`` of a sharded run (0-based index), or None."""
        return None if self.shard is None else parse_shard(self.shard)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, values: Mapping[str, Any]) -> RunSpec:
        """A spec from option values by name (None: not given, the default applies).

        :raises UsageError: an unknown name (naming the known ones) or a bad value
        """
        unknown = sorted(set(values) - set(OPTIONS) - {"sources"})
        if unknown:
            known = ", ".join(sorted(OPTIONS))
            raise UsageError(f"Unknown option {unknown[0]!r}. Known options: {known}.")
        given = {k: v for k, v in values.items() if v is not None}
        parts: dict[str, Any] = {}
        for name, part in (
            ("campaign", Campaign),
            ("audience", Audience),
            ("sending", Sending),
            ("tracking", Tracking),
        ):
            names = {f.name for f in dataclasses.fields(part)}
            parts[name] = part(**{k: v for k, v in given.items() if k in names})
        top = {f.name for f in dataclasses.fields(cls)} - set(parts)
        return cls(**parts, **{k: v for k, v in given.items() if k in top})

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with option values changed by name (validated again)."""
        values = self.values()
        values.update(changes)
        return RunSpec.build(values)

    def values(self) -> dict[str, Any]:
        """Every option value by name (the inverse of :meth:`build`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.update({g.name: getattr(value, g.name) for g in dataclasses.fields(value)})
            else:
                out[f.name] = value
        return out

    # -- state.json -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON values, for ``state.json`` (never holds the API key)."""
        out = {}
        for name, value in self.values().items():
            opt = OPTIONS.get(name)
            if opt is not None and not opt.stored:
                continue
            if name == "once_per_ledger" and isinstance(value, str) and is_postgres_url(value):
                value = location_of(value)  # never the password (see bulkbatch.dburl)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec :meth:`to_json` stored."""
        values = dict(data)
        if isinstance(values.get("sources"), list):
            values["sources"] = tuple(values["sources"])
        return cls.build(values)

    # -- identity ---------------------------------------------------------------------------
    def outcome_values(self) -> dict[str, Any]:
        """The values that decide who is sent what (part of the campaign identity)."""
        return {
            name: value
            for name, value in self.to_json().items()
            if (OPTIONS[name].outcome if name in OPTIONS else False)
        }

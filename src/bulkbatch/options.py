"""Every run option, defined once: its flag, TOML key, Python keyword, help and error wording.

An :class:`Option` is the single definition the command line (``bulkbatch.cli.flags``), the
TOML run file (``bulkbatch.cli.runfile``), the Python front door (``bulkbatch.send(...)``
keywords, checked against this table by a test) and every error message draw from. A message
about a value names ``option.flag``, so it can never name a flag that does not exist.

Adding an option (see ``docs/internals.md``): add one ``Option`` to :data:`OPTIONS`, a field of
the same name to its group in :mod:`bulkbatch.spec`, and a keyword to the front door; then use it
in the stage that needs it.

This module imports nothing heavy (no click, no DuckDB): ``bulkbatch --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from bulkbatch.errors import UsageError

__all__ = ["OPTIONS", "Group", "Option", "option"]

Group = Literal["campaign", "audience", "sending", "tracking", "run", "connection"]
Kind = Literal["str", "int", "float", "bool", "json", "map", "list"]


@dataclass(frozen=True)
class Option:
    """One run option.

    :param name: the Python keyword, the spec field and the state.json key (snake_case)
    :param group: which part of the :class:`~bulkbatch.spec.RunSpec` it belongs to
    :param kind: how a raw value (flag text, TOML value) becomes a typed one
    :param help: the ``--help`` text (also the docs)
    :param flag_name: the flag when it is not ``--`` + the name in kebab-case
    :param minimum: the smallest allowed number (``min_open``: the bound itself is not allowed)
    :param choices: the allowed values of a text option
    :param envvar: an environment variable the CLI reads when the flag is not given
    :param secret: never stored, printed or shown as a default
    :param stored: kept in state.json (and so restored by ``resume``)
    :param outcome: decides who is sent what (part of the campaign identity)
    """

    name: str
    group: Group
    kind: Kind
    help: str
    flag_name: str | None = None
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    choices: tuple[str, ...] = ()
    envvar: str | None = None
    secret: bool = False
    stored: bool = True
    outcome: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--batch-size``."""
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def toml_key(self) -> str:
        """The key in a TOML run file, e.g. ``batch-size``."""
        return self.flag.removeprefix("--").removeprefix("no-")

    def invalid(self, value: object, why: str) -> UsageError:
        """A :class:`UsageError` about ``value`` that names the flag and the keyword."""
        shown = "(hidden)" if self.secret else repr(value)
        return UsageError(f"{self.flag} {shown} {why} (Python: {self.name}=).")

    def check(self, value: object) -> None:
        """Raise :meth:`invalid` when a typed value is outside what the option allows."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise self.invalid(value, f"is not one of {', '.join(self.choices)}")
        if self.kind in ("int", "float"):
            self._check_number(value)

    def _check_number(self, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.invalid(value, "must be a number")
        if self.kind == "int" and not isinstance(value, int):
            raise self.invalid(value, "must be a whole number")
        if not math.isfinite(value):
            raise self.invalid(value, "must be a finite number")
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value < lo or (self.min_open and value == lo)):
            bound = f"above {lo:g}" if self.min_open else f"at least {lo:g}"
            raise self.invalid(value, f"must be {bound}" + (f" and at most {hi:g}" if hi else ""))
        if hi is not None and value > hi:
            raise self.invalid(value, f"must be at most {hi:g}")


def _options(*items: Option) -> dict[str, Option]:
    return {o.name: o for o in items}


_DATA_HELP = "JSON object text, or @FILE with one"

OPTIONS: Mapping[str, Option] = _options(
    # -- campaign: what is sent (all of it decides the campaign identity) --------------------
    Option(
        "event",
        "campaign",
        "str",
        "Courier event or notification (template) id to send. Required by Courier; with only "
        "--template, the template id is sent as the event.",
        outcome=True,
    ),
    Option(
        "template",
        "campaign",
        "str",
        "Courier notification template id (overrides the event's template).",
        outcome=True,
    ),
    Option(
        "content",
        "campaign",
        "json",
        "Inline Elemental content, e.g. "
        '\'{"title": "Hi", "body": "Hello {{first_name}}"}\' (' + _DATA_HELP + ").",
        metavar="JSON|@FILE",
        outcome=True,
    ),
    Option("brand", "campaign", "str", "Courier brand id.", outcome=True),
    Option(
        "locale",
        "campaign",
        "str",
        "Each user's locale (to.locale), e.g. en_US, unless the row has its own.",
        outcome=True,
    ),
    Option(
        "override",
        "campaign",
        "json",
        "Courier 'override' object for the job (" + _DATA_HELP + "); provider and channel "
        "settings go here, routing lives in the template.",
        metavar="JSON|@FILE",
        outcome=True,
    ),
    Option(
        "data",
        "campaign",
        "json",
        "Global data merged under each user's data; per-user values win (" + _DATA_HELP + ").",
        metavar="JSON|@FILE",
        outcome=True,
    ),
    Option(
        "channel",
        "campaign",
        "str",
        "The channel you expect the notification to use: plan checks every user has the "
        "address it needs (email: profile.email, sms: phone_number, push: a user id). A "
        "pre-flight hint only, never sent: Courier routes by the template.",
        choices=("email", "sms", "push", "inbox", "none"),
    ),
    # -- audience: who ----------------------------------------------------------------------
    Option(
        "format",
        "audience",
        "str",
        "Input format (auto: by file extension).",
        choices=("auto", "csv", "parquet", "ndjson"),
        outcome=True,
    ),
    Option("delimiter", "audience", "str", "CSV delimiter (default: sniffed).", outcome=True),
    Option("quote", "audience", "str", "CSV quote character (default: sniffed).", outcome=True),
    Option(
        "encoding",
        "audience",
        "str",
        "CSV encoding, e.g. latin-1 or cp1252 (default: utf-8).",
        outcome=True,
    ),
    Option(
        "mapping",
        "audience",
        "map",
        "Map a column (or a dotted path into a struct/JSON column) to a user field, e.g. "
        "--map to.user_id=customer_id --map data.first_name=fname. Repeatable.",
        flag_name="--map",
        metavar="TARGET=COLUMN",
        outcome=True,
    ),
    Option(
        "where",
        "audience",
        "str",
        "One SQL boolean expression over the input columns, e.g. \"country = 'DE'\"; rows it "
        "excludes are 'filtered', not failures.",
        outcome=True,
    ),
    Option(
        "sql",
        "audience",
        "str",
        "A query over table 'inputs' that selects the audience (keep its row_number column). "
        "It is your own SQL and runs with this process's file access.",
        outcome=True,
    ),
    Option(
        "dedupe",
        "audience",
        "str",
        "Which row to keep when rows share a recipient.",
        choices=("first", "last", "fail"),
        outcome=True,
    ),
    Option(
        "max_user_bytes",
        "audience",
        "int",
        "Largest user JSON to send; larger rows are rejected as too_large.",
        minimum=1,
        outcome=True,
    ),
    # -- sending: how fast ---------------------------------------------------------------------
    Option(
        "batch_size",
        "sending",
        "int",
        "Users per ingest call (Courier fails calls above 1000).",
        minimum=1,
        maximum=1000,
        outcome=True,
    ),
    Option(
        "max_job_size",
        "sending",
        "int",
        "Users per bulk job; jobs are paged side by side. Default: about 64 jobs of at least "
        "10,000 users each, whatever --concurrency is (a retry with other tuning sends the "
        "same keys). Against a distant API, smaller jobs page faster (1M at 150 ms: 10000). "
        "0: one job for everyone.",
        minimum=0,
        outcome=True,
    ),
    Option(
        "rate",
        "sending",
        "float",
        "Most requests per second (default: unknown; start at 800/s, double each second that "
        "rate holds the run back, and cut it on 429s).",
        minimum=0,
        min_open=True,
        maximum=100_000,
    ),
    Option(
        "concurrency",
        "sending",
        "int",
        "Most writes (ingest calls, job creates) in flight at once (default 32); reads "
        "(result pages) start at this many and widen up to 4x while the server keeps up.",
        minimum=1,
        maximum=256,
    ),
    Option(
        "http_timeout",
        "sending",
        "float",
        "Seconds to wait for one HTTP response before retrying it.",
        minimum=0,
        min_open=True,
        maximum=3600,
    ),
    Option(
        "poll_interval",
        "sending",
        "float",
        "Most seconds between job status polls (polls start fast and back off to this).",
        minimum=0,
        maximum=3600,
    ),
    Option(
        "max_attempts",
        "sending",
        "int",
        "Tries per request, the first included, before a retryable failure (429, 5xx, "
        "timeout, dropped connection) stops the run; resume continues it (default 8).",
        minimum=1,
        maximum=1000,
    ),
    Option(
        "max_backoff",
        "sending",
        "float",
        "Most seconds to wait between two tries of a request, also when the server's "
        "Retry-After asks for longer (default 30).",
        minimum=0,
        min_open=True,
        maximum=86_400,
    ),
    # -- tracking: what to learn after sending ----------------------------------------------------
    Option(
        "wait",
        "tracking",
        "bool",
        "Stop after the jobs are started; 'bulkbatch resume' tracks them later.",
        flag_name="--no-wait",
    ),
    Option(
        "timeout",
        "tracking",
        "float",
        "Most seconds to wait for the jobs to finish; the run stays resumable after it.",
        minimum=0,
    ),
    Option(
        "messages",
        "tracking",
        "bool",
        "Also fetch each message's delivery status (GET /messages/{id}, one per person; "
        "use webhooks for large audiences).",
    ),
    Option(
        "include_profile",
        "tracking",
        "bool",
        "Keep every input column in results.parquet (default: key columns only).",
    ),
    # -- run: which campaign instance, where, and when it counts as failed ----------------------
    Option(
        "run_id",
        "run",
        "str",
        "Campaign instance name, e.g. welcome-2026-12-01 from a scheduler. The same command "
        "with the same name never sends anyone twice; a new name sends the campaign again.",
        outcome=True,
    ),
    Option(
        "shard",
        "run",
        "str",
        "Send only shard I of N (0-based, e.g. 2/8): the people whose recipient hashes there. "
        "Duplicates share a shard; rows with no recipient are in shard 0. Each shard is its "
        "own campaign instance; combine their results with 'bulkbatch merge'.",
        metavar="I/N",
        outcome=True,
    ),
    Option(
        "run_dir",
        "run",
        "str",
        "Run directory (default: runs/<event>-<campaign id>). An existing one is continued.",
        stored=False,
    ),
    Option(
        "once_per",
        "run",
        "str",
        "Campaign key: skip people any run already sent (or is sending) under KEY.",
        metavar="KEY",
        outcome=True,
    ),
    Option(
        "once_per_ledger",
        "run",
        "str",
        "Where the --once-per ledger lives (default: the per-user data directory, or beside "
        "the --config file): a SQLite file, or postgresql://USER@HOST/DB shared by workers on "
        "many machines (with the campaign registry). A password in the URL is used, never "
        "stored: a resume reads it from PGPASSWORD or ~/.pgpass.",
        metavar="PATH|URL",
    ),
    Option(
        "fail_on_rejects",
        "run",
        "bool",
        "Exit 1 when any row was rejected or ended in ERROR (default: report them, exit 0).",
    ),
    Option(
        "max_reject_rate",
        "run",
        "float",
        "Exit 1 when more than this share of rows (0-1) was rejected or ended in ERROR.",
        minimum=0,
        maximum=1,
    ),
    # -- connection: where Courier is (never part of the identity; the key is never stored) -----
    Option(
        "base_url",
        "connection",
        "str",
        "Courier API root (default https://api.courier.com).",
        envvar="COURIER_BASE_URL",
    ),
    Option(
        "api_key",
        "connection",
        "str",
        "Courier API key. Prefer the environment variable; it is never printed or stored.",
        envvar="COURIER_API_KEY",
        secret=True,
        stored=False,
    ),
)


def option(name: str) -> Option:
    """The option called ``name`` (a KeyError names a typo in the code, not user input)."""
    return OPTIONS[name]


def in_group(group: Group) -> Iterator[Option]:
    """The options of one spec group, in definition order."""
    return (o for o in OPTIONS.values() if o.group == group)


def flags() -> frozenset[str]:
    """Every flag an option defines (a test checks messages name only these or CLI flags)."""
    return frozenset(o.flag for o in OPTIONS.values())

"""``bulkbatch emulator``: the click command (the main CLI adds it as a subcommand)."""

from __future__ import annotations

import gc

import click

from bulkbatch.emulator.backend import Progression
from bulkbatch.emulator.contract import require_checker
from bulkbatch.emulator.faults import EmulatorConfigError, FaultSpec
from bulkbatch.emulator.rules import parse_routes
from bulkbatch.emulator.webhooks import DEFAULT_TIME_SCALE, TIMEOUT_S

__all__ = ["emulator_command"]


def _parse_faults(ctx: click.Context, param: click.Parameter, value: str | None) -> FaultSpec:
    try:
        return FaultSpec.parse(value)
    except EmulatorConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _contract_checker_installed(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--check-contract needs openapi-core, which only the dev extra installs: say so here,
    not in a traceback as the server starts."""
    if value:
        try:
            require_checker("--check-contract")
        except EmulatorConfigError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _parse_routes(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, list[str]]:
    try:
        return parse_routes(value)
    except EmulatorConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _check_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter(
            "the key is empty, which would accept any request; pass a non-empty key, or "
            "leave the option (and BULKBATCH_EMULATOR_API_KEY) unset to turn auth off",
            ctx=ctx,
            param=param,
        )
    return value


def _check_secret(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value:
        raise click.BadParameter(
            "the secret is empty; pass a non-empty secret, or leave the option (and "
            "BULKBATCH_EMULATOR_WEBHOOK_SECRET) unset to send unsigned events",
            ctx=ctx,
            param=param,
        )
    return value


def _parse_progression(ctx: click.Context, param: click.Parameter, value: str) -> Progression:
    try:
        return Progression.parse(value)
    except EmulatorConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


GC_GEN0 = 50_000
"""The emulator process's gen-0 collection threshold (Python's default: 700)."""


def tune_gc() -> None:
    """Collect young objects less often in this process, which serves only the emulator.

    A 1,000-user ingest body parses into ~15,000 dicts and lists that live exactly as long as
    the request. At the default threshold they set off ~14 collections per body, each
    scanning what the body had built so far: in one process, parsing one body took 3.9-4.8 ms
    and checking it 5.3-6.9, against 1.7-2.3 and 2.2-3.4 at this threshold; over HTTP, 1,200
    ingests cost the emulator 14-17 % less CPU (``bench/RESULTS.md``, round 13 of #19).
    What was loaded before serving is frozen out of every collection. Not done by ``serve``:
    an emulator inside another process (tests, ``--emulator``) leaves its host's GC alone.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0)


@click.command(name="emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=8089,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free port.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file for state (jobs, users, messages, idempotency records, counters "
    "survive a restart). Default: in memory.",
)
@click.option(
    "--api-key",
    envvar="BULKBATCH_EMULATOR_API_KEY",
    default=None,
    show_envvar=True,
    metavar="KEY",
    callback=_check_key,
    help="Require 'Authorization: Bearer KEY' on the API and on /_emulator/* (401 "
    "otherwise). Must not be empty. Default: no auth.",
)
@click.option(
    "--flavor",
    type=click.Choice(["current", "tutorial"]),
    default="current",
    show_default=True,
    help="Which of Courier's documented answers to give: 'current' follows the OpenAPI "
    "spec and SDK (create 200 {jobId}, ingest 204, run 204; job message needs 'event'); "
    "'tutorial' follows the bulk tutorial (201, 200 {total, errors}, 202; nested "
    "message.message accepted).",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="EVENT=CHANNEL[,CHANNEL]",
    callback=_parse_routes,
    help="Route EVENT's messages over these channels, first routable wins (email, sms, "
    "push, inbox, direct_message, webhook); repeatable. Default: email for every event.",
)
@click.option(
    "--check-contract/--no-check-contract",
    envvar="BULKBATCH_EMULATOR_CHECK_CONTRACT",
    show_envvar=True,
    default=False,
    callback=_contract_checker_installed,
    help="Validate the API responses against the bundled Courier OpenAPI spec (sampled on "
    "long runs; needs openapi-core) and count violations in GET /_emulator/stats "
    "(contract_violations); "
    "BULKBATCH_EMULATOR_CONTRACT_LOG=FILE also appends each one to FILE as a JSON line.",
)
@click.option(
    "--faults",
    default=None,
    metavar="SPEC",
    callback=_parse_faults,
    help="Opt-in seeded faults, comma-separated key=value: rate_limit (req/s; over it 429 "
    "with Retry-After), error_rate (0..1; 500), drop_rate (0..1; connection closed with no "
    "response, half of them after the request was committed), latency_ms (added to every "
    "API request), max_users_per_call (default 1000; more users in one ingest call get 502, "
    "faults or not), seed (default 0); for --webhook-url: webhook_dup_rate (0..1; an event "
    "POSTed twice), webhook_reorder_rate (0..1; held back so later events overtake it), "
    "webhook_drop_rate (0..1; never POSTed, counted dropped).",
)
@click.option(
    "--progression",
    default="polls:2",
    show_default=True,
    callback=_parse_progression,
    help="When a run job completes: 'immediate'; 'polls:N' (the N-th GET /bulk/{id} after "
    "run completes it; each message advances ENQUEUED -> SENT -> DELIVERED one step per N "
    "reads); 'seconds:T' (T seconds after run; messages advance one step every T seconds).",
)
@click.option(
    "--webhook-url",
    default=None,
    metavar="URL",
    help="POST a Courier 'message:updated' event to URL for every message status change "
    "(ENQUEUED, SENT, DELIVERED, UNDELIVERABLE, UNROUTABLE, CANCELED), from a background "
    "sender with an outbox in the database (a restart with --db still delivers). "
    "Default: no webhooks.",
)
@click.option(
    "--webhook-secret",
    envvar="BULKBATCH_EMULATOR_WEBHOOK_SECRET",
    show_envvar=True,
    default=None,
    metavar="SECRET",
    callback=_check_secret,
    help="Sign the events: 'courier-signature: t=<ms>,signature=<hex HMAC-SHA256 of "
    '"<t>.<body>">\'. Kept in memory only (never logged or written to --db). Default: '
    "unsigned, as Courier sends them without a secret.",
)
@click.option(
    "--webhook-time-scale",
    default=DEFAULT_TIME_SCALE,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Multiply Courier's webhook retry delays (5 s, 10 s, ... then every 15 min, 104 "
    "attempts) by this; 1 = real timing.",
)
@click.option(
    "--webhook-timeout",
    default=TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for the receiver's answer before retrying (Courier: 10).",
)
def emulator_command(
    host: str,
    port: int,
    db: str | None,
    api_key: str | None,
    flavor: str,
    routes: dict[str, list[str]],
    check_contract: bool,
    faults: FaultSpec,
    progression: Progression,
    webhook_url: str | None,
    webhook_secret: str | None,
    webhook_time_scale: float,
    webhook_timeout: float,
) -> None:
    """Serve a local Courier-compatible Bulk + Messages API.

    Prints one line, 'bulkbatch emulator listening on URL', when ready, and serves until
    Ctrl-C or SIGTERM. Point a client at it with COURIER_BASE_URL=URL. Control endpoints:
    GET /_emulator/stats, POST /_emulator/reset, POST /_emulator/clock,
    GET /_emulator/config, POST /_emulator/webhooks/flush (they need the key too when
    --api-key is set).

    Example:

    \b
        bulkbatch emulator --port 8089 --db emulator.sqlite \\
            --faults "rate_limit=50,error_rate=0.05,drop_rate=0.01,seed=7"
    """
    from bulkbatch.emulator.server import serve

    def ready(url: str) -> None:
        click.echo(f"bulkbatch emulator listening on {url}")

    tune_gc()
    try:
        serve(
            host,
            port,
            db,
            api_key,
            faults,
            str(progression),
            on_ready=ready,
            flavor=flavor,
            routes=routes,
            check_contract=check_contract,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            webhook_time_scale=webhook_time_scale,
            webhook_timeout=webhook_timeout,
        )
    except EmulatorConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None

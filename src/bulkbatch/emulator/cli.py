"""``bulkbatch emulator``: the click command (the main CLI adds it as a subcommand)."""

from __future__ import annotations

import click

from bulkbatch.emulator.backend import Progression
from bulkbatch.emulator.faults import EmulatorConfigError, FaultSpec

__all__ = ["emulator_command"]


def _parse_faults(ctx: click.Context, param: click.Parameter, value: str | None) -> FaultSpec:
    try:
        return FaultSpec.parse(value)
    except EmulatorConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _parse_progression(ctx: click.Context, param: click.Parameter, value: str) -> Progression:
    try:
        return Progression.parse(value)
    except EmulatorConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


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
    help="Require 'Authorization: Bearer KEY' (401 otherwise). Default: no auth.",
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
    "faults or not), seed (default 0).",
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
def emulator_command(
    host: str,
    port: int,
    db: str | None,
    api_key: str | None,
    faults: FaultSpec,
    progression: Progression,
) -> None:
    """Serve a local Courier-compatible Bulk + Messages API.

    Prints one line, 'bulkbatch emulator listening on URL', when ready, and serves until
    Ctrl-C or SIGTERM. Point a client at it with COURIER_BASE_URL=URL. Control endpoints:
    GET /_emulator/stats, POST /_emulator/reset.

    Example:

    \b
        bulkbatch emulator --port 8089 --db emulator.sqlite \\
            --faults "rate_limit=50,error_rate=0.05,drop_rate=0.01,seed=7"
    """
    from bulkbatch.emulator.server import serve

    def ready(url: str) -> None:
        click.echo(f"bulkbatch emulator listening on {url}")

    try:
        serve(host, port, db, api_key, faults, str(progression), on_ready=ready)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None

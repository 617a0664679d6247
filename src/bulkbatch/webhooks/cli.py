"""``bulkbatch webhooks``: the click group (the main CLI adds it as a subcommand).

Also runnable on its own: ``python -m bulkbatch.webhooks serve ...``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bulkbatch.errors import BulkBatchError

__all__ = ["webhooks_command"]

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Failure(click.ClickException):
    exit_code = 1


class _UsageFailure(_Failure):
    exit_code = 2


def _failure(message: str, exit_code: int) -> _Failure:
    return _UsageFailure(message) if exit_code == 2 else _Failure(message)


def _one_line_errors(fn: F) -> F:
    """Show a :class:`BulkBatchError` as one line with its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BulkBatchError as exc:
            raise _failure(str(exc), exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _log_to_stderr() -> None:
    """Rejected requests are JSON lines on the ``bulkbatch.webhooks`` logger: put them on stderr."""
    logger = logging.getLogger("bulkbatch.webhooks")
    if not any(getattr(h, "_bulkbatch_webhooks", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._bulkbatch_webhooks = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@click.group(name="webhooks", context_settings=CONTEXT_SETTINGS)
def webhooks_command() -> None:
    """Receive Courier's outbound webhooks (per-message delivery events) into a local store.

    Courier POSTs one 'message:updated' event per status change of every message
    (ENQUEUED, SENT, DELIVERED, OPENED, CLICKED, UNDELIVERABLE, ...). 'serve' verifies each
    event's courier-signature, commits it to a SQLite store and only then answers 200;
    'export' writes the store to Parquet. One store can serve many runs.

    Example:

    \b
        export COURIER_WEBHOOK_SECRET=...        # from Courier: Settings > Webhooks
        bulkbatch webhooks serve --store webhooks.sqlite
        bulkbatch webhooks export webhooks.sqlite events.parquet
        bulkbatch webhooks export webhooks.sqlite outcomes.parquet --outcomes
    """


@webhooks_command.command(name="serve", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--store",
    required=True,
    type=click.Path(dir_okay=False),
    help="SQLite file the events go to (created if missing; safe to read while serving).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Keep loopback and put an HTTPS reverse proxy in front.",
)
@click.option(
    "--port",
    default=8090,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free port.",
)
@click.option(
    "--secret",
    "secrets",
    envvar="COURIER_WEBHOOK_SECRET",
    show_envvar=True,
    multiple=True,
    metavar="SECRET",
    help="The webhook's signing secret from Courier's settings. Prefer the environment "
    "variable (a command line is visible to other users). Give it twice while rotating "
    "secrets: either one is accepted. Never printed or logged.",
)
@click.option(
    "--insecure-no-signature",
    is_flag=True,
    help="Accept events without checking their signature. Only for a local test.",
)
@click.option(
    "--max-age",
    default=7 * 24 * 3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Reject a signature older than this; 0 accepts any age. Wide on purpose: Courier "
    "never retries a 401, and may not re-sign its retries (which run for up to 3 days).",
)
@click.option(
    "--max-body-bytes",
    default=256 * 1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Larger requests get 413.",
)
@click.option(
    "--body-timeout",
    default=30.0,  # receiver.DEFAULT_BODY_TIMEOUT (not imported: it loads starlette)
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="A request whose body has not arrived this long after its headers gets 408 and "
    "its connection is closed, so a stalled client cannot hold it.",
)
@click.option(
    "--durability",
    type=click.Choice(["fsync", "process"]),
    default="fsync",
    show_default=True,
    help="When to answer 200: 'fsync' once the commit is on disk (survives a power loss); "
    "'process' once it is in the OS (survives the receiver being killed, not the machine "
    "crashing), about twice the throughput.",
)
@click.option(
    "--keep-bodies",
    is_flag=True,
    help="Also store every raw body (by default only bodies that are not message:updated, "
    "or that did not fit the typed columns, are kept).",
)
@_one_line_errors
def serve_command(
    store: str,
    host: str,
    port: int,
    secrets: tuple[str, ...],
    insecure_no_signature: bool,
    max_age: float,
    max_body_bytes: int,
    body_timeout: float,
    durability: str,
    keep_bodies: bool,
) -> None:
    """Serve POST /webhooks/courier (and GET /healthz) until Ctrl-C or SIGTERM.

    Prints one line, 'bulkbatch webhooks listening on URL', when ready. Each event is
    answered 200 only after it is committed to the store; rejected requests (401 bad
    signature, 400 bad JSON, 408 body too slow, 413 too large, 415 not JSON) are logged as
    JSON lines on stderr, without header values. On SIGTERM queued events are committed
    before exit.

    Examples:

    \b
        COURIER_WEBHOOK_SECRET=... bulkbatch webhooks serve --store webhooks.sqlite
        bulkbatch webhooks serve --store /var/lib/bulkbatch/webhooks.sqlite --port 8090
        bulkbatch webhooks serve --store test.sqlite --port 0 --insecure-no-signature
    """
    from bulkbatch.webhooks.server import serve

    _log_to_stderr()

    def ready(url: str) -> None:
        click.echo(f"bulkbatch webhooks listening on {url}")

    try:
        serve(
            store,
            host=host,
            port=port,
            secrets=list(secrets),
            insecure_no_signature=insecure_no_signature,
            max_age=max_age or None,
            max_body_bytes=max_body_bytes,
            body_timeout=body_timeout,
            keep_bodies=keep_bodies,
            durability=durability,
            on_ready=ready,
        )
    except OSError as exc:
        raise _Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@webhooks_command.command(name="export", context_settings=CONTEXT_SETTINGS)
@click.argument("store", type=click.Path(dir_okay=False, exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--outcomes",
    is_flag=True,
    help="Write one row per message (its derived delivery status and times) instead of "
    "one row per received event.",
)
@_one_line_errors
def export_command(store: str, out: str, outcomes: bool) -> None:
    """Write the events of a webhook store to a Parquet file.

    One row per received event (duplicates included), in arrival order: seq, received_at,
    type, message_id, status, event, notification, recipient, recipient_id, enqueued, sent,
    delivered, opened, clicked, reason, error, signed_at. With --outcomes: one row per
    message id with delivery_status, delivered_at, opened_at, clicked_at, reason, ...,
    derived by status precedence (never arrival order). Works while 'serve' is running.

    Examples:

    \b
        bulkbatch webhooks export webhooks.sqlite events.parquet
        bulkbatch webhooks export webhooks.sqlite outcomes.parquet --outcomes
    """
    from bulkbatch.webhooks.store import export_events, export_outcomes

    rows = (export_outcomes if outcomes else export_events)(store, out)
    what = "messages" if outcomes else "events"
    click.echo(f"wrote {rows:,} {what} to {out}")


if __name__ == "__main__":
    webhooks_command(prog_name="bulkbatch webhooks")

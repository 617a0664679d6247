"""Exit codes, errors as one line, and stopping on signals: the CLI's whole exit policy.

=====  ==========================================================================================
code   meaning, and what a scheduler's retry does
=====  ==========================================================================================
0      the campaign is complete (or started, with ``--no-wait``). Rejected, filtered or ERROR
       rows are in the summary and results.parquet, not failures. A retry of the same command
       sends nobody again and exits 0.
1      an error or a stop (Ctrl-C, SIGTERM, SIGHUP) after which ``bulkbatch resume RUN_DIR``
       (or the same command) continues without sending anyone twice; also rows over
       ``--fail-on-rejects`` / ``--max-reject-rate``, whose retry changes nothing.
2      bad usage: an unknown option, a bad value, a missing input. Nothing was sent.
=====  ==========================================================================================
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bulkbatch.errors import BulkBatchError
from bulkbatch.stopping import stop_on

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "forget_handled_interrupt",
    "handle_errors",
    "install_signal_handlers",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(click.ClickException):
    """A failure shown as one line (``Error: ...``), with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        ctx = click.get_current_context(silent=True)
        obj = (ctx.find_root().obj or {}) if ctx is not None else {}
        if obj.get("log_format") == "json":
            import orjson

            line = {"level": "error", "message": self.format_message(), "exit": self.exit_code}
            click.echo(orjson.dumps(line).decode(), err=True)
        else:
            super().show(file)


class StopNotice(CliError):
    """A stop (Ctrl-C, SIGTERM): one plain line, not an ``Error:``."""

    def show(self, file: Any = None) -> None:
        ctx = click.get_current_context(silent=True)
        obj = (ctx.find_root().obj or {}) if ctx is not None else {}
        if obj.get("log_format") == "json":
            super().show(file)
        else:
            click.echo(self.format_message(), err=True)


def _stop(signum: int, frame: object) -> None:
    # While a run's event loop runs, bulkbatch._sync receives SIGTERM and SIGHUP itself
    # (stop_on, below) and stops the run as an anyio cancellation: DuckDB work is
    # interrupted, the ledger keeps every acknowledged batch, then KeyboardInterrupt comes
    # out. This handler only sees a stop outside that loop (starting up, importing, writing
    # the summary), where raising is what Ctrl-C itself does. It used to send SIGINT to the
    # process, which an inherited "ignore SIGINT" (a background job of a shell script)
    # swallowed: the run went on.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """SIGTERM (a container stopping, Airflow killing a task) and SIGHUP stop a run the way
    Ctrl-C does: acknowledged batches stay recorded, one line names the resume command."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    stop_on(signal.SIGTERM, signal.SIGHUP)


def forget_handled_interrupt() -> None:
    """Clear CPython's note of an unhandled Ctrl-C once the CLI has handled the stop.

    CPython 3.11 notes a ``KeyboardInterrupt`` that leaves an ``exec()`` of a string (a
    dataclass being built while a module imports: the stop came during the run commands'
    lazy imports) as unhandled, even when the CLI then handles it, and ``python -m bulkbatch``
    killed itself with SIGINT at exit (-2) instead of exiting 1. Each ``exec()`` of a string
    clears that note first, so an empty one clears it: there is no API for it. A stop that
    really goes unhandled is noted again on its way out.
    """
    exec("")  # noqa: S102 - a constant, empty program


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("debug"))


def handle_errors(fn: F) -> F:
    """Library errors as one line with their exit code; never a traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except BulkBatchError as exc:
            if _debug(ctx):
                raise
            raise CliError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt as exc:
            run_dir = ctx.meta.get("bulkbatch.run_dir")
            name = exc.args[0] if exc.args else "SIGINT"
            what = "Interrupted" if name == "SIGINT" else f"Stopped by {name}"
            hint = f" Resume with: bulkbatch resume {run_dir}" if run_dir else ""
            raise StopNotice(f"{what}. Every acknowledged batch is recorded.{hint}") from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if _debug(ctx):
                raise
            if _storage_error(exc):
                raise CliError(
                    f"{_first_line(str(exc))}. The file is damaged or its disk failed: restore "
                    "it, or move the run directory aside and run the same 'bulkbatch send' "
                    "command again (nobody acknowledged is sent twice)."
                ) from None
            raise CliError(
                f"Unexpected {type(exc).__name__}: {exc}. Rerun with --debug for a traceback, "
                "and please report it."
            ) from None

    return wrapper  # type: ignore[return-value]


def _storage_error(exc: BaseException) -> bool:
    """DuckDB could not read or write a file (truncated, unreadable, disk failing): not a bug
    to report. Checked by name, so the CLI does not import DuckDB to start."""
    kind = type(exc)
    return kind.__module__.lstrip("_").startswith("duckdb") and kind.__name__ == "IOException"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text

"""What stops a run the way Ctrl-C does: a leaf, so the CLI can say so at startup without
importing the event loop (asyncio and anyio add ~80 ms to every command, ``--help``
included).

* Signals: :mod:`bulkbatch._sync` reads them when a run starts in the main thread: SIGINT
  while it still has Python's default handler, plus whatever :func:`stop_on` added.
* A host's own handler of a stop signal (:func:`host_handlers`: Dagster's interrupt,
  Airflow's timeout alarm): a run in the main thread receives the signal and calls the
  handler from its loop, so what it raises comes out after the run has unwound.
* A host's own stop: :func:`request_stop`, for a host that has its own signal handler and
  calls back (Airflow's task runner calls the operator's ``on_kill`` from its SIGTERM
  handler). Each run registers itself here while it goes on (:func:`stoppable`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["HostHandler", "host_handlers", "request_stop", "stop_on", "stop_signals", "stoppable"]

HostHandler = Callable[[int, FrameType | None], Any]
_HOST_STOPS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGALRM") if hasattr(signal, n)
)
"""Signals whose host handler a run calls from its loop; SIGALRM for alarm-based timeouts
(Airflow's ``execution_timeout`` raises ``AirflowTaskTimeout`` from its handler)."""

_STOP_LIKE_CTRL_C: set[signal.Signals] = set()
_RUNNING: dict[int, Callable[[str], None]] = {}
"""The runs going on in this process: a key of each, and how to stop it."""


def stop_on(*signals: signal.Signals) -> None:
    """Let ``signals`` stop a run the way Ctrl-C does: an anyio cancellation that ends in
    ``KeyboardInterrupt(name)``. The CLI does so for SIGTERM and SIGHUP; a library caller
    keeps whatever its own handlers do."""
    _STOP_LIKE_CTRL_C.update(signals)


def stop_signals() -> list[signal.Signals]:
    """The signals a run in the main thread takes over while it runs, to stop like Ctrl-C.
    SIGINT only from Python's default handler, as ``asyncio.run`` does: a host's own handler
    (Dagster's step processes, say) is called instead (:func:`host_handlers`), and an
    inherited "ignore" (a background job of a shell script) stays."""
    taken = sorted(_STOP_LIKE_CTRL_C)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    return taken


def host_handlers() -> dict[signal.Signals, HostHandler]:
    """The stop signals (SIGINT, SIGTERM, SIGHUP, SIGALRM) that have a host's own Python
    handler: not Python's default, not one :func:`stop_on` took, not SIG_IGN or SIG_DFL. A
    run in the main
    thread receives these itself and calls the handler from its event loop: what the handler
    raises (Dagster's ``DagsterExecutionInterruptedError``) comes out once the run has unwound
    as Ctrl-C unwinds it; a handler that returns (records the signal, calls
    :func:`request_stop`) lets the run go on."""
    found: dict[signal.Signals, HostHandler] = {}
    for sig in _HOST_STOPS:
        handler = signal.getsignal(sig)
        if sig in _STOP_LIKE_CTRL_C or handler is signal.default_int_handler:
            continue
        if callable(handler):
            found[sig] = handler
    return found


def request_stop(reason: str) -> bool:
    """Stop every run going on in this process the way Ctrl-C does: an anyio cancellation,
    so DuckDB work is interrupted and waited for and acknowledged batches are committed, that
    ends in ``KeyboardInterrupt(reason)``. The run stays resumable.

    Safe from a signal handler (it only schedules the stop) and from any thread. Returns
    whether a run was going on; with none, nothing is remembered for a later one.
    """
    # No lock: a signal handler runs in the main thread between two bytecodes, maybe inside
    # stoppable(), where waiting on a lock would deadlock. Copying a dict's values, setting
    # and popping a key are each one step under the GIL.
    stops = tuple(_RUNNING.values())
    for stop in stops:
        stop(reason)
    return bool(stops)


@contextmanager
def stoppable(stop: Callable[[str], None]) -> Iterator[None]:
    """Register ``stop`` (thread- and signal-safe: it only schedules the stop) as how
    :func:`request_stop` reaches the run going on inside this block."""
    key = id(stop)
    _RUNNING[key] = stop
    try:
        yield
    finally:
        _RUNNING.pop(key, None)

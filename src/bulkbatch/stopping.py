"""Which signals stop a run the way Ctrl-C does: a leaf, so the CLI can say so at startup
without importing the event loop (asyncio and anyio add ~80 ms to every command, ``--help``
included).

:mod:`bulkbatch._sync` reads it when a run starts in the main thread: SIGINT while it still
has Python's default handler, plus whatever :func:`stop_on` added.
"""

from __future__ import annotations

import signal

__all__ = ["stop_on", "stop_signals"]

_STOP_LIKE_CTRL_C: set[signal.Signals] = set()


def stop_on(*signals: signal.Signals) -> None:
    """Let ``signals`` stop a run the way Ctrl-C does: an anyio cancellation that ends in
    ``KeyboardInterrupt(name)``. The CLI does so for SIGTERM and SIGHUP; a library caller
    keeps whatever its own handlers do."""
    _STOP_LIKE_CTRL_C.update(signals)


def stop_signals() -> list[signal.Signals]:
    """The signals a run in the main thread takes over while it runs. SIGINT only from Python's
    default handler, as ``asyncio.run`` does: a host with its own (Dagster's step processes,
    say) keeps it, and an inherited "ignore" (a background job of a shell script) stays."""
    taken = sorted(_STOP_LIKE_CTRL_C)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    return taken

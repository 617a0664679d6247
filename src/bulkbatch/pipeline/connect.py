"""Which Courier a run talks to: the real API (bound at the first request) or its own emulator.

A run is bound to one Courier for good when its first job is created: its jobs exist only
there (a request that created nothing, e.g. one refused for a wrong key, binds nothing). Resuming it against another host is refused, naming both hosts and the way forward.
An ``--emulator`` run restarts its in-process emulator on the database kept in the run
directory, so even a rehearsal resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from bulkbatch.client.courier import CourierClient
from bulkbatch.client.models import RetryEvent
from bulkbatch.config import Settings
from bulkbatch.errors import StateError
from bulkbatch.options import option
from bulkbatch.progress import Progress, ProgressEvent
from bulkbatch.state import RunState

__all__ = ["bind_base_url", "client_for", "client_stats"]


def _norm(url: str) -> str:
    return url.rstrip("/")


def bind_base_url(state: RunState, settings: Settings) -> None:
    """Check (or, before the first request, record) the Courier this run talks to."""
    if state.emulator:
        return
    if not state.base_url:
        return  # nothing exists at any Courier yet: bound when the first job is created
    if _norm(settings.base_url) != _norm(state.base_url):
        flag = option("base_url")
        raise StateError(
            f"Run {state.run_id} talks to {state.base_url}, where its jobs exist, but this "
            f"command points at {settings.base_url}. To continue it, set "
            f"{flag.envvar}={state.base_url} (or pass {flag.flag} {state.base_url}); to send "
            f"this campaign to {settings.base_url} instead, start a new run there."
        )


def _retry_reporter(progress: Progress) -> Callable[[RetryEvent], None]:
    """Every retry and throttle as a progress event: a long wait is never silent."""

    def on_retry(event: RetryEvent) -> None:
        progress(ProgressEvent("retry", message=str(event), extra=dataclasses.asdict(event)))

    return on_retry


def _insecure_notice(client: CourierClient, progress: Progress) -> None:
    if client.insecure_transport:
        progress(
            ProgressEvent(
                "notice",
                message=f"the API key goes over plain http:// to {client.base_url}, which is "
                "not this machine: anyone on the way can read it. Use https://.",
            )
        )


@contextlib.asynccontextmanager
async def client_for(
    state: RunState, settings: Settings, progress: Progress
) -> AsyncIterator[CourierClient]:
    """A client for the run's Courier (the emulator restarted when the run has one)."""
    on_retry = _retry_reporter(progress)
    if state.emulator:
        from bulkbatch.emulator import Emulator

        with Emulator(db=state.run_dir / "emulator.sqlite", progression=state.emulator) as emu:
            local = dataclasses.replace(settings, base_url=emu.url, api_key=None)
            async with CourierClient(local, on_retry=on_retry) as client:
                yield client
        return
    bind_base_url(state, settings)  # bound for good when its first job is created
    async with CourierClient(settings, on_retry=on_retry) as client:
        _insecure_notice(client, progress)
        yield client


def client_stats(client: CourierClient) -> dict[str, object]:
    """What the run's client did, for ``state.progress["client"]``."""
    stats = client.stats
    return {
        "requests": stats.requests,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "status_counts": {str(k): v for k, v in stats.status_counts.items()},
    }

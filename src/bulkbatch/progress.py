"""Progress reporting: the library calls a callback, the front door decides how to show it.

Library code never prints. Each long step reports :class:`ProgressEvent` values to a
``progress`` callable; the CLI renders them with rich, a notebook may ignore them or log them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NullProgress", "Progress", "ProgressEvent", "RecordingProgress"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    :param stage: ``load``, ``plan``, ``create``, ``ingest``, ``run``, ``wait``, ``page``,
        ``messages``, ``results`` or ``merge``
    :param done: units finished so far (users, pages, messages …)
    :param total: units in all, when known
    :param unit: what ``done`` counts, e.g. ``users``
    :param message: a short sentence for logs (no secrets, no personal data)
    :param extra: stage-specific numbers (job status, retries, current rate …)
    """

    stage: str
    done: int = 0
    total: int | None = None
    unit: str = ""
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def NullProgress(event: ProgressEvent) -> None:
    """Discard progress reports."""


class RecordingProgress:
    """Keep every report (for tests and notebooks)."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

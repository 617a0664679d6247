"""Courier's statuses and their order: the one definition every stage, the CLI and the report use.

Job statuses come from ``GET /bulk/{job_id}``; per-user statuses from ``GET /bulk/{job}/users``;
message (delivery) statuses from the Messages API and outbound webhooks
(``../shared/reference/courier-tracking.md``).
"""

from __future__ import annotations

__all__ = [
    "DELIVERY_FUNNEL",
    "DELIVERY_PRECEDENCE",
    "FINAL_DELIVERY_STATUSES",
    "FINAL_JOB_STATUSES",
    "JOB_STATUSES",
    "STAGES",
    "USER_STATUSES",
    "delivery_rank",
]

JOB_STATUSES = ("CREATED", "PROCESSING", "COMPLETED", "ERROR")
FINAL_JOB_STATUSES = frozenset({"COMPLETED", "ERROR"})
"""A job in one of these has stopped changing: its per-user results can be paged."""

USER_STATUSES = ("PENDING", "ENQUEUED", "ERROR")

DELIVERY_FUNNEL = ("ENQUEUED", "SENT", "DELIVERED", "OPENED", "CLICKED")
"""The happy path of a message, in order."""

DELIVERY_PRECEDENCE: dict[str, int] = {
    "ENQUEUED": 10,
    "DELAYED": 20,
    "DIGESTED": 21,
    "ROUTED": 30,
    "CANCELED": 31,
    "FILTERED": 32,
    "THROTTLED": 33,
    "UNMAPPED": 34,
    "UNROUTABLE": 35,
    "SENT": 40,
    "SIMULATED": 45,
    "DELIVERED": 50,
    "UNDELIVERABLE": 60,
    "OPENED": 70,
    "CLICKED": 80,
}
"""How far a message got. Events arrive duplicated and in any order (Courier retries and does
not order its webhooks), so a message's current status is the one with the highest rank, never
the last to arrive:

* progress: ENQUEUED < DELAYED < DIGESTED < ROUTED;
* pre-send endings (CANCELED, FILTERED, THROTTLED, UNMAPPED, UNROUTABLE) beat that progress
  but lose to SENT: a cancel is a soft guarantee, the message may have gone out anyway;
* SENT < SIMULATED < DELIVERED, and UNDELIVERABLE beats both (a late bounce);
* OPENED < CLICKED beat everything: engagement proves the message arrived;
* a status not in the table (Courier's enum is open) ranks below all known ones (0).
"""

FINAL_DELIVERY_STATUSES = frozenset(
    {
        "DELIVERED",
        "OPENED",
        "CLICKED",
        "UNDELIVERABLE",
        "CANCELED",
        "FILTERED",
        "THROTTLED",
        "UNMAPPED",
        "UNROUTABLE",
    }
)
"""A message in one of these needs no reconciling by ``GET /messages/{id}``."""

STAGES = ("load", "plan", "send", "track", "results")
"""The pipeline's stages, in order; ``state.json`` marks each when it finishes."""


def delivery_rank(status: str | None) -> int:
    """The precedence of a delivery status (0 for unknown or none)."""
    return DELIVERY_PRECEDENCE.get(status or "", 0)

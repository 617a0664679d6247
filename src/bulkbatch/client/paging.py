"""Bounds for the two loops a server could keep going forever: paging and polling.

* :class:`UsersPaging` checks each page of ``GET /bulk/{job_id}/users`` as it arrives: the
  cursor must advance (a cursor seen before is an error naming the job and the cursor), the
  users listed may not exceed the job's ``received``, no page may list a recipient twice,
  and there may be at most ``received / 100 + 2`` pages.
* :class:`PollSchedule` spaces job-status polls: an early first poll (0.1 s) doubling up to
  the configured interval, and a deadline. With no ``timeout`` given the deadline is
  :func:`default_max_wait` of the job's size, so a job that never completes still ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bulkbatch.errors import PagingError

__all__ = [
    "FIRST_POLL",
    "MIN_DEFAULT_WAIT",
    "PAGE_SIZE",
    "PollSchedule",
    "UsersPaging",
    "default_max_wait",
]

PAGE_SIZE = 100
"""Users per page of ``GET /bulk/{job_id}/users`` (Courier's ``FETCH_LIMIT``)."""
FIRST_POLL = 0.1
"""Seconds before the second status poll; the wait doubles up to ``poll_interval``."""
MIN_DEFAULT_WAIT = 3600.0
"""The shortest default wait for a job to finish, in seconds (with no ``timeout``)."""
USERS_PER_SECOND = 100.0
"""The slowest progress the default wait allows for: a job of ``n`` users gets
``MIN_DEFAULT_WAIT + n / USERS_PER_SECOND`` seconds (1M users: about 3.8 h)."""
_CURSOR_SHOWN = 80


def default_max_wait(users: int) -> float:
    """The default bound, in seconds, on waiting for a job of ``users`` users to finish."""
    return MIN_DEFAULT_WAIT + max(0, users) / USERS_PER_SECOND


def _show(cursor: str | None) -> str:
    if cursor is None:
        return "(none)"
    text = repr(cursor)
    return text if len(text) <= _CURSOR_SHOWN else text[: _CURSOR_SHOWN - 3] + "..."


@dataclass
class UsersPaging:
    """The running checks on one job's user listing.

    :param job_id: for messages
    :param received: the job's ``received`` (users successfully ingested)
    :param pages: pages already fetched (and stored) before this one, when resuming
    :param listed: users already listed on those pages
    :param cursor: the cursor the next request sends (``None``: the first page)
    :param page_size: users per page
    """

    job_id: str
    received: int
    pages: int = 0
    listed: int = 0
    cursor: str | None = None
    page_size: int = PAGE_SIZE
    _seen: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.cursor is not None:
            self._seen.add(self.cursor)

    @property
    def max_pages(self) -> int:
        """The most pages a listing of ``received`` users may take: ``received / size + 2``."""
        return self.received // self.page_size + 2

    @property
    def pages_left(self) -> int:
        """Pages still to fetch, the next one included, as far as ``received`` tells: a
        job's place in the queue for a read slot (the longest chain first, so the last job
        to finish ingesting is not also the last to get slots)."""
        return max(1, -(-(self.received - self.listed) // self.page_size))

    def _error(self, what: str) -> PagingError:
        return PagingError(
            f"Listing the users of bulk job {self.job_id} (GET /bulk/{self.job_id}/users) "
            f"went wrong at page {self.pages + 1}, cursor {_show(self.cursor)}: {what}. "
            f"The job received {self.received} users, so the results cannot be trusted; "
            "the pages so far are kept. Contact Courier support with the job id."
        )

    def check(self, items: list[dict[str, Any]], next_cursor: str | None, more: bool) -> bool:
        """Check one page (the answer to the request with :attr:`cursor`) and move on.

        Returns whether there is another page to fetch.

        :raises PagingError: the page breaks one of the bounds above
        """
        return self.check_recipients([item.get("recipient") for item in items], next_cursor, more)

    def check_recipients(
        self, recipients: Sequence[Any], next_cursor: str | None, more: bool
    ) -> bool:
        """:meth:`check` for a page given as its users' recipients (``None`` when absent)."""
        if self.pages + 1 > self.max_pages:
            raise self._error(f"more than {self.max_pages} pages")
        listed = self.listed + len(recipients)
        if listed > self.received:
            raise self._error(
                f"{listed} users listed so far, more than the {self.received} it received"
            )
        duplicate = _first_duplicate(recipients)
        if duplicate is not None:
            raise self._error(f"recipient {duplicate!r} is listed twice on one page")
        if more and next_cursor is None:
            raise self._error("the page says there are more users but gives no cursor")
        if more and next_cursor in self._seen:
            raise self._error(f"the next cursor {_show(next_cursor)} was already used")
        self.pages += 1
        self.listed = listed
        if more:
            assert next_cursor is not None
            self._seen.add(next_cursor)
            self.cursor = next_cursor
        return more


def _first_duplicate(values: Iterable[Any]) -> Any:
    seen: set[Any] = set()
    for value in values:
        if value is None:
            continue
        if value in seen:
            return value
        seen.add(value)
    return None


@dataclass
class PollSchedule:
    """When to poll a job again, and when to stop waiting.

    :param interval: the longest wait between polls (``Settings(poll_interval=...)``)
    :param max_wait: seconds to wait in all; ``None``: :func:`default_max_wait` of ``users``
    :param users: the job's size, for the default wait
    :param first: the first wait; it doubles up to ``interval``
    """

    interval: float
    max_wait: float | None = None
    users: int = 0
    first: float = FIRST_POLL
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = min(self.first, self.interval)

    @property
    def limit(self) -> float:
        """The wait, in seconds, after which the job is given up on (for now)."""
        return self.max_wait if self.max_wait is not None else default_max_wait(self.users)

    @property
    def is_default(self) -> bool:
        return self.max_wait is None

    def next_wait(self) -> float:
        """The wait before the next poll (0.1, 0.2, 0.4, ... up to ``interval``)."""
        wait = self._next
        self._next = min(self.interval, max(wait, 1e-3) * 2.0)
        return wait

    def expired(self, elapsed: float, wait: float) -> bool:
        """Whether polling again after ``wait`` more seconds would pass the limit."""
        return elapsed + wait > self.limit

"""The bulkbatch exception tree.

Every error a user can meet is one of these; the CLI turns a ``BulkBatchError`` into one
line and an exit code, and the sender decides whether to retry by class
(``isinstance(exc, Retryable)``), never by matching message text.

* BulkBatchError
  x InputError              - an input file is missing, unreadable, empty or lacks a column   [exit 1]
  x UsageError              - options that contradict each other or name unknown things       [exit 2]
    + InvalidApiKey         - the API key has a control or non-ASCII character (never shown)
    + InvalidHeader         - a header value HTTP cannot carry, e.g. a non-ASCII Idempotency-Key
  x PlanError               - the plan cannot be made (e.g. ``--dedupe fail`` met duplicates)
  x StateError              - the run directory is missing, locked, corrupt or from other inputs
  x ApiError                - Courier answered with an error (method, path, status, type)
    + RateLimited           - 429; has ``retry_after``                                  [Retryable]
    + ServerError           - 5xx                                                       [Retryable]
    + ClientError           - any other 4xx                                             [Terminal]
      - AuthenticationError - 401/403: the key is missing, wrong, or for another workspace
      - NotFound            - 404: unknown job or message
      - JobAlreadySubmitted - 400 BulkJobAlreadySubmittedError: ingest after run
      - JobAlreadyRun       - 400 BulkJobDuplicateInvocationError: a second run
    + BadResponse           - an answer off the contract: not JSON, wrong type, redirect [Terminal]
  x ApiUnavailable          - connect/read timeout, dropped connection             [Retryable]
  x JobFailed               - the bulk job reached ERROR
  x AccountingError         - the per-row accounting does not add up; the run is not trusted
  x Interrupted             - the run was stopped (Ctrl-C, timeout) and can be resumed
  x PagingError             - a job's user listing never ends or lists extra users      [Terminal]

Messages say what happened, which value, and what to do next. No message, ``repr`` or
log line ever contains the API key: ``ApiError`` is built from the method, path, status
and the server's error body only.
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "ApiError",
    "ApiUnavailable",
    "AuthenticationError",
    "BadResponse",
    "BulkBatchError",
    "ClientError",
    "InputError",
    "Interrupted",
    "InvalidApiKey",
    "InvalidHeader",
    "JobAlreadyRun",
    "JobAlreadySubmitted",
    "JobFailed",
    "NotFound",
    "PagingError",
    "PlanError",
    "RateLimited",
    "Retryable",
    "ServerError",
    "StateError",
    "Terminal",
    "UsageError",
    "leaf_errors",
    "unwrap",
]


class Retryable:
    """Mix-in: the operation may succeed if tried again later."""


class Terminal:
    """Mix-in: trying again cannot help; a person has to change something."""


class BulkBatchError(Exception):
    """Base class of every error bulkbatch raises on purpose.

    ``exit_code`` is what the CLI exits with: 1 for a failure, 2 for bad usage.
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(BulkBatchError, Terminal):
    """An input file is missing, unreadable, empty, or lacks a column the job needs."""


class UsageError(BulkBatchError, Terminal):
    """Options that contradict each other, or name a column or file that does not exist."""

    exit_code = 2


class PlanError(BulkBatchError, Terminal):
    """The plan cannot be made as asked (for example ``--dedupe fail`` met duplicates)."""


class StateError(BulkBatchError, Terminal):
    """The run directory is missing, locked by another process, corrupt, or from other inputs."""


class ApiError(BulkBatchError):
    """Courier answered a request with an error status.

    :param method: the HTTP method, e.g. ``POST``
    :param path: the request path, e.g. ``/bulk/1-65f1.../run`` (never the full URL with a key)
    :param status: the HTTP status code
    :param api_message: ``message`` of the error envelope, or the raw body's start
    :param api_type: ``type`` of the error envelope, if any
    :param hint: what the user can do next
    """

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        api_message: str = "",
        api_type: str | None = None,
        hint: str = "",
        request_id: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.api_message = api_message
        self.api_type = api_type
        self.request_id = request_id
        text = f"{method} {path} failed with HTTP {status}"
        if api_message:
            text += f": {api_message}"
        if api_type:
            text += f" ({api_type})"
        if request_id:
            text += f" [request id {request_id}]"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class RateLimited(ApiError, Retryable):
    """HTTP 429. ``retry_after`` is the server's requested wait in seconds, if it said."""

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(ApiError, Retryable):
    """HTTP 5xx: the server failed; the same request may succeed later."""

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ClientError(ApiError, Terminal):
    """Any other HTTP 4xx: the request itself is wrong."""


class AuthenticationError(ClientError):
    """HTTP 401/403: the API key is missing, wrong, or belongs to another workspace."""


class NotFound(ClientError):
    """HTTP 404: the job or message does not exist (or is in another workspace)."""


class JobAlreadySubmitted(ClientError):
    """HTTP 400 BulkJobAlreadySubmittedError: users were sent to a job that already ran."""


class JobAlreadyRun(ClientError):
    """HTTP 400 BulkJobDuplicateInvocationError: the job was run before (it runs once)."""


class ApiUnavailable(BulkBatchError, Retryable):
    """The request got no answer: connect or read timeout, or the connection was dropped."""


class JobFailed(BulkBatchError, Terminal):
    """The bulk job reached status ERROR."""


class AccountingError(BulkBatchError, Terminal):
    """The per-row accounting does not add up; the results are not to be trusted."""


class Interrupted(BulkBatchError):
    """The run was stopped before it finished (Ctrl-C, a timeout); it can be resumed."""

    exit_code = 1


class InvalidApiKey(UsageError):
    """The API key holds a control character (other than surrounding whitespace, which is
    stripped) or a non-ASCII one, so no HTTP header can carry it. The message names the
    position and kind of the character, never the key."""


class InvalidHeader(UsageError):
    """A header value HTTP cannot carry (e.g. a non-ASCII ``Idempotency-Key``). The message
    names the header, never the value of an ``Authorization`` header."""


class BadResponse(ApiError, Terminal):
    """Courier answered, but the answer breaks the API contract: a body that is not JSON, a
    field of the wrong type, a missing field, or a redirect (never followed: the API key
    would go along). Retrying the same request would get the same answer.

    :param problem: what is wrong with the answer, e.g. ``"job.received is 'x', not an integer"``
    :param status: the HTTP status, or ``None`` when the body could not even be decoded
    """

    def __init__(
        self,
        method: str,
        path: str,
        status: int | None,
        problem: str,
        *,
        hint: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(method, path, status or 0, problem, hint=hint, request_id=request_id)
        answer = f"HTTP {status}" if status else "an answer"
        text = f"{method} {path} got {answer} that does not follow Courier's API: {problem}"
        if request_id:
            text += f" [request id {request_id}]"
        if hint:
            text += f". {hint}"
        self.message = text
        self.args = (text,)


class PagingError(BulkBatchError, Terminal):
    """Paging a bulk job's users (``GET /bulk/{job_id}/users``) does not add up: a cursor
    that does not advance, more pages than the job's ``received`` allows, or more (or
    repeated) users than the job received. The message names the job and the cursor."""


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, depth first."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def unwrap(exc: BaseException) -> BaseException:
    """The one error to show for ``exc``: task groups wrap failures in ExceptionGroups.

    A Ctrl-C wins, then the first bulkbatch error (a terminal one before a retryable one),
    then whatever came first.
    """
    leaves = leaf_errors(exc)
    for kind in (KeyboardInterrupt, Terminal, BulkBatchError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc

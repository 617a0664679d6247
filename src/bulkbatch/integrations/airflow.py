"""bulkbatch on Airflow 3: one operator sends one shard, another merges the shards.

``pip install 'bulkbatch[airflow]'``. Both operators are classic task-SDK operators
(:class:`airflow.sdk.BaseOperator`) that make one call into the Python front door:

* :class:`BulkbatchSendOperator` — ``bulkbatch.send(source, shard="I/N", ...)`` for one shard
  (or the whole audience). Its XCom is a small dict: ``run_dir``, ``shard``, ``campaign``,
  ``already_sent`` and the accounting ``counts``.
* :class:`BulkbatchMergeOperator` — ``bulkbatch.merge(run_dirs, out=...)`` over the shards'
  XComs; its XCom is the merged accounting.

:mod:`bulkbatch.integrations.airflow_dag` builds the example DAG: N shards fanned out with
dynamic task mapping, merged after. ``docs/orchestrators.md`` ("Airflow") is the guide.

**The Courier connection** (default id ``courier_default``, any connection type):
``password`` is the API key (empty: no key, for a local emulator); the base URL is ``host``
when it holds a full URL, else ``{schema or "https"}://{host}[:{port}]``; with no host,
Courier's own API. So ``AIRFLOW_CONN_COURIER_DEFAULT='courier://:pk_prod_xxx@api.courier.com'``
for Courier and ``courier://:KEY@127.0.0.1:8089/http`` for the emulator. The key goes to
bulkbatch and nowhere else: it is never logged, templated or returned.

**Retries resume.** The default ``run_id`` (bulkbatch's campaign instance name) is
``{{ dag.dag_id }}/{{ run_id }}``: the same for every try of a task in one DAG run, new for
the next DAG run. A retried task therefore continues its shard — from its run directory when
the worker still has it, else (another worker, a lost disk) by sending the same
Idempotency-Keys, which Courier answers with its saved replies — and sends nobody twice; the
next scheduled DAG run sends the campaign again. Errors that no retry can heal (bad options,
a missing input, a plan refused as asked) fail the task at once (``AirflowFailException``);
everything else (Courier unavailable, rate limits, a stopped run) is left to ``retries``.

**Stopping a task.** Airflow stops a running task (marked failed or cleared in the UI, a
worker shutting down) with a SIGTERM, on which its task runner calls the operator's
``on_kill()``. :class:`BulkbatchSendOperator` then stops the send the way Ctrl-C stops the
CLI: DuckDB work is interrupted and waited for, every batch Courier acknowledged is
committed, and the task fails with "stopped by Airflow (on_kill)". Its run is resumable:
the next try continues it, sending nobody twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseHook, BaseOperator, XComArg
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from bulkbatch.config import DEFAULT_BASE_URL
from bulkbatch.errors import BulkBatchError, InputError, PlanError, UsageError
from bulkbatch.options import OPTIONS
from bulkbatch.progress import Progress, ProgressEvent
from bulkbatch.stages.accounting import rows_failed
from bulkbatch.stopping import request_stop

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import Logger

__all__ = [
    "DEFAULT_CONN_ID",
    "DEFAULT_RUN_ID",
    "BulkbatchMergeOperator",
    "BulkbatchSendOperator",
    "TaskLogProgress",
    "check_send_options",
    "courier_connection",
    "default_runs_root",
]

DEFAULT_CONN_ID = "courier_default"
KILLED = "stopped by Airflow (on_kill)"
"""Why a send stopped by :meth:`BulkbatchSendOperator.on_kill` ends (in its exception)."""
DEFAULT_RUN_ID = "{{ dag.dag_id }}/{{ run_id }}"
"""The campaign instance of a task: stable across its tries, new with every DAG run."""

NEVER_RETRIED: tuple[type[BulkBatchError], ...] = (UsageError, InputError, PlanError)
"""bulkbatch errors that fail the task without retries: the same call fails the same way
until a person changes the DAG, the connection or the input."""

# Options that have one way in other than ``send_options`` (and why), so each has one.
_ELSEWHERE = {
    **{
        name: f"pass {name}= to the operator instead."
        for name in ("event", "template", "data", "shard", "run_id")
    },
    "api_key": "it comes from the Courier connection (courier_conn_id), never from the DAG.",
    "base_url": "it comes from the Courier connection (courier_conn_id).",
    "run_dir": "each shard gets its own under runs_root=; pass runs_root= instead.",
    "wait": "a task waits for its shard to finish (the merge needs its results).",
}


def default_runs_root() -> Path:
    """``$AIRFLOW_HOME/bulkbatch/runs`` (``~/airflow`` when ``AIRFLOW_HOME`` is unset)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow")
    return Path(home).expanduser() / "bulkbatch" / "runs"


def courier_connection(conn_id: str) -> tuple[str, str | None]:
    """``(base_url, api_key)`` from an Airflow connection (see the module docstring)."""
    conn = BaseHook.get_connection(conn_id)
    key = conn.password or None
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL, key
    if "://" in host:
        return host.rstrip("/"), key
    scheme = (conn.schema or "https").strip().lower()
    if scheme not in ("http", "https"):
        raise AirflowFailException(
            f"Connection {conn_id!r}: schema {conn.schema!r} is not http or https. Leave it "
            "empty for https, or set it to http for a local emulator."
        )
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}", key


class TaskLogProgress:
    """A ``progress=`` callback that writes bulkbatch's progress to the task log, throttled.

    A stage's first report and its end are always logged, in between at most one line per
    ``every`` seconds per stage, so a million-person send writes tens of lines, not a million.
    Per-job reports (``wait``, ``page``) are summed over jobs, as the CLI does; retries are
    throttled like a stage of their own (a 429 storm is one line per ``every``). Notices are
    few and each says something else (the plan's warnings, a campaign continued elsewhere):
    every one is logged, as a warning.
    """

    _PER_JOB = ("wait", "page")

    def __init__(self, log: Logger, every: float = 15.0) -> None:
        self.log = log
        self.every = every
        self._last: dict[str, float] = {}
        self._ended: set[str] = set()
        self._jobs: dict[str, dict[object, ProgressEvent]] = {}
        self._started: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "notice":
            self.log.warning("%s", self._line(event, 0.0, 0))
            return
        now = time.monotonic()
        event = self._summed(event)
        stage = event.stage
        self._started.setdefault(stage, now)
        ended = event.total is not None and event.done >= event.total
        if not ended:
            self._ended.discard(stage)  # more work came (another job): its end shows again
        first = stage not in self._last
        due = now - self._last.get(stage, -float("inf")) >= self.every
        if not (first or due or (ended and stage not in self._ended)):
            self._skipped[stage] = self._skipped.get(stage, 0) + 1
            return
        if ended:
            self._ended.add(stage)
        self._last[stage] = now
        line = self._line(event, now - self._started[stage], self._skipped.pop(stage, 0))
        self.log.info("%s", line)

    def _summed(self, event: ProgressEvent) -> ProgressEvent:
        job = event.extra.get("job_no")
        if event.stage not in self._PER_JOB or job is None:
            return event
        per_job = self._jobs.setdefault(event.stage, {})
        per_job[job] = event
        done = sum(e.done for e in per_job.values())
        total = sum(e.total or 0 for e in per_job.values())
        message = f"{len(per_job)} job(s)" if len(per_job) > 1 else event.message
        return ProgressEvent(event.stage, done, total or None, event.unit, message)

    @staticmethod
    def _line(event: ProgressEvent, elapsed: float, skipped: int) -> str:
        parts = [f"[{event.stage}]"]
        if event.total is not None:
            parts.append(f"{event.done:,}/{event.total:,} {event.unit}".rstrip())
            if elapsed > 0 and event.done:
                parts.append(f"{event.done / elapsed:,.0f} {event.unit or 'units'}/s")
        elif event.done:
            parts.append(f"{event.done:,} {event.unit}".rstrip())
        if event.message:
            parts.append(event.message)
        if skipped and event.stage == "retry":
            parts.append(f"(+{skipped:,} more since the last line)")
        return "  ".join(parts)


def check_send_options(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` as a dict, once every name is a ``bulkbatch.send`` keyword that belongs in
    ``send_options`` (values are checked by bulkbatch when the task runs).

    :raises ValueError: naming the option and where it goes instead
    """
    for name in options:
        where = _ELSEWHERE.get(name)
        if where:
            raise ValueError(f"send_options[{name!r}]: {where}")
        if name not in OPTIONS:
            known = ", ".join(sorted(set(OPTIONS) - set(_ELSEWHERE)))
            raise ValueError(f"send_options[{name!r}] is not a bulkbatch option. Known: {known}.")
    return dict(options)


def _rows_failed(summary: Mapping[str, Any], options: Mapping[str, object]) -> str | None:
    """Why the shard fails under ``fail_on_rejects`` / ``max_reject_rate`` (the CLI's exit
    code 1, :func:`bulkbatch.stages.accounting.rows_failed`), or None. A retry would count the
    same rows again, so it is not retried."""
    limit = options.get("max_reject_rate")
    return rows_failed(
        summary,
        fail_on_rejects=bool(options.get("fail_on_rejects")),
        max_reject_rate=float(limit) if isinstance(limit, int | float) else None,
    )


class BulkbatchSendOperator(BaseOperator):
    """Send one shard of a bulk notification (``bulkbatch send --shard I/N``).

    :param source: the audience: a path, glob or folder, or a list of them (templated)
    :param event: the Courier event or notification id (templated)
    :param template: a Courier template id (templated)
    :param data: global data, a dict or JSON text; each user's own data wins (templated)
    :param shard: ``"I/N"`` (0-based) to send only shard I of N; None sends everyone
        (templated; mapped with ``.expand(shard=[...])``)
    :param run_id: the campaign instance name (templated). The default,
        ``{{ dag.dag_id }}/{{ run_id }}``, is the same for every try in one DAG run and new
        for the next one; None: no instance name, so the identical campaign is sent once ever
    :param send_options: any other ``bulkbatch.send`` keyword by name, e.g.
        ``{"rate": 20, "where": "country = 'FR'", "once_per": "welcome-2026"}`` (templated;
        names are checked when the operator is built — for a mapped one, when it runs —
        values by bulkbatch when the task runs)
    :param courier_conn_id: the Airflow connection with the API key and base URL; None: the
        worker's ``COURIER_API_KEY`` / ``COURIER_BASE_URL``
    :param runs_root: where run directories go (templated); default
        ``$AIRFLOW_HOME/bulkbatch/runs``. Local to the worker unless it is shared storage
    :param log_every: seconds between progress lines of one stage in the task log
    """

    template_fields: Sequence[str] = (
        "source",
        "event",
        "template",
        "data",
        "shard",
        "run_id",
        "send_options",
        "runs_root",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "data": "json",
        "send_options": "json",
    }
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        source: str | Sequence[str],
        event: str | None = None,
        template: str | None = None,
        data: Mapping[str, Any] | str | None = None,
        shard: str | None = None,
        run_id: str | None = DEFAULT_RUN_ID,
        send_options: Mapping[str, object] | None = None,
        courier_conn_id: str | None = DEFAULT_CONN_ID,
        runs_root: str | None = None,
        log_every: float = 15.0,
        **kwargs: Any,  # BaseOperator's own: task_id, retries, pool ...
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.event = event
        self.template = template
        self.data = data
        self.shard = shard
        self.run_id = run_id
        self.send_options = check_send_options(send_options or {})
        self.courier_conn_id = courier_conn_id
        self.runs_root = runs_root
        self.log_every = log_every
        self._killed = False

    def on_kill(self) -> None:
        """Stop the send the way Ctrl-C does (see the module docstring). Airflow calls this
        from its SIGTERM handler, so it only asks for the stop, which the send carries out:
        it logs nothing here (a log call could need a lock the interrupted code holds)."""
        self._killed = True
        request_stop(KILLED)

    @staticmethod
    def _stopped() -> AirflowException:
        return AirflowException(
            f"bulkbatch: {KILLED}. The run is resumable: a retry of this task continues it "
            "and sends nobody twice."
        )

    def progress_callback(self) -> Progress:
        """The ``progress=`` given to bulkbatch: the task log, throttled (override to add)."""
        return TaskLogProgress(self.log, self.log_every)

    def execute(self, context: Context) -> dict[str, Any]:
        import bulkbatch

        base_url, api_key = (
            courier_connection(self.courier_conn_id) if self.courier_conn_id else (None, None)
        )
        runs_root = Path(self.runs_root) if self.runs_root else default_runs_root()
        options: dict[str, Any] = dict(self.send_options)
        self.log.info(
            "bulkbatch: sending %s shard %s as instance %r to %s (runs under %s)",
            self.event or self.template,
            self.shard or "(all)",
            self.run_id,
            base_url or "COURIER_BASE_URL",
            runs_root,
        )
        if self._killed:  # stopped before the send began: nothing to stop yet
            raise self._stopped()
        try:
            run = bulkbatch.send(
                list(self.source) if isinstance(self.source, list | tuple) else self.source,
                event=self.event,
                template=self.template,
                data=self.data,
                shard=self.shard,
                run_id=self.run_id,
                base_url=base_url,
                api_key=api_key,
                runs_root=runs_root,
                progress=self.progress_callback(),
                **options,
            )
        except NEVER_RETRIED as exc:
            raise AirflowFailException(f"bulkbatch: {exc}") from exc
        except KeyboardInterrupt as exc:
            if exc.args != (KILLED,):
                raise
            raise self._stopped() from None
        summary = run.summary()
        result = {
            "run_dir": str(run.path.resolve()),
            "shard": self.shard,
            "campaign": summary.get("campaign"),
            "already_sent": bool(summary.get("already_sent")),
            "counts": dict(summary["counts"]),
        }
        self.log.info("bulkbatch: %s", result)
        failed = _rows_failed(summary, options)
        if failed:
            raise AirflowFailException(f"bulkbatch: {failed}; results are in {run.path}")
        return result


def _run_dir(shard: object) -> str:
    if isinstance(shard, Mapping) and isinstance(shard.get("run_dir"), str):
        return str(shard["run_dir"])
    if isinstance(shard, str | os.PathLike):
        return os.fspath(shard)
    raise AirflowFailException(
        f"BulkbatchMergeOperator: {shard!r} is neither a BulkbatchSendOperator XCom nor a path."
    )


class BulkbatchMergeOperator(BaseOperator):
    """Merge the shards of one campaign into one results dataset (``bulkbatch merge``).

    :param shards: the shards' XComs (``send.output`` of the mapped send task) or their run
        directories (templated). The run directories must be readable here: on one machine,
        or with ``runs_root`` on storage every worker mounts
    :param out: a ``.parquet`` file, or a folder for a Hive-partitioned dataset (templated)
    :param log_every: seconds between progress lines in the task log
    """

    template_fields: Sequence[str] = ("shards", "out")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        shards: Sequence[Mapping[str, Any] | str] | XComArg,
        out: str,
        log_every: float = 15.0,
        **kwargs: Any,  # BaseOperator's own
    ) -> None:
        super().__init__(**kwargs)
        self.shards = shards
        self.out = out
        self.log_every = log_every

    def execute(self, context: Context) -> dict[str, Any]:
        import bulkbatch

        shards = self.shards  # rendered: the XComs, a lazy sequence of the mapped tasks'
        if not isinstance(shards, Iterable):
            raise AirflowFailException(f"BulkbatchMergeOperator: shards={shards!r} is not a list.")
        run_dirs = [_run_dir(s) for s in shards]
        try:
            info = bulkbatch.merge(
                run_dirs, self.out, progress=TaskLogProgress(self.log, self.log_every)
            )
        except NEVER_RETRIED as exc:
            raise AirflowFailException(f"bulkbatch merge: {exc}") from exc
        merged = info.to_dict()
        self.log.info(
            "bulkbatch: merged %d shard(s), %s input rows: %s -> %s",
            info.shards,
            f"{info.input_rows:,}",
            info.counts,
            info.out,
        )
        return merged

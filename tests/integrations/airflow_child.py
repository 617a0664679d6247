"""An Airflow DAG file and the scenarios tests/integrations/test_airflow.py runs in a child.

Airflow reconfigures logging and warnings when it is imported, so the tests never import it
in the pytest process: they copy this file into a fresh DAGs folder (``AIRFLOW_HOME`` and an
SQLite metadata DB in tmp_path) and run it as ``python airflow_child.py SCENARIO``. Parsed by
Airflow's DagBag it only defines the DAGs below (from ``BB_AF_*`` environment variables); run
as a script it creates the metadata DB, runs one scenario with ``dag.test()`` and prints a JSON
line ``RESULT {...}`` for the test to check.

Scenarios:

* ``shards``: the example DAG (4 mapped shards, then the merge), then the same DAG run again
  (``dag.test()`` with the same logical date: a retried DAG run).
* ``flaky``: one send task whose first try dies half-way through ingest; Airflow retries it
  "on another worker" (another runs root and campaign registry, so only Courier's
  idempotency replay can save it). It talks to its own emulator (connection ``courier_flaky``).
* ``killed``: Airflow stops a send task half-way through ingest the way it stops any task (a
  SIGTERM to the task process: marked failed in the UI, a worker shutting down); its task
  runner calls ``on_kill()``. The retry continues the run (connection ``courier_killed``).
* ``refused``: mistakes no retry can heal (a missing input, a bad option value, a plan
  refused as asked) fail on the first try although the tasks have retries.
* ``units``: the connection convention, option checks, error mapping and the log throttle.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Context

from bulkbatch.integrations.airflow import BulkbatchSendOperator
from bulkbatch.integrations.airflow_dag import sharded_send_dag
from bulkbatch.progress import Progress, ProgressEvent

ENV = os.environ.get
LOGICAL_DATE = datetime(2026, 11, 30, tzinfo=UTC)

shards_dag = sharded_send_dag(
    "bulkbatch_shards",
    source=ENV("BB_AF_SOURCE", "audience.csv"),
    event="welcome",
    shards=int(ENV("BB_AF_SHARDS", "4")),
    out=ENV("BB_AF_OUT", "merged/{{ ds }}/"),
    data={"company": "Acme Corp", "day": "{{ ds }}"},
    send_options={"poll_interval": 0.2},
    runs_root=ENV("BB_AF_RUNS"),
    retries=1,
    retry_delay=timedelta(0),
)


class WorkerLost(RuntimeError):
    """The first try's worker dies half-way through ingest."""


class HalfWayOperator(BulkbatchSendOperator):
    """Try 1 meets :meth:`half_way` once, half-way through ingest; later tries run as they are."""

    try_number = 0

    def execute(self, context: Context) -> dict[str, Any]:
        self.try_number = context["ti"].try_number
        return super().execute(context)

    def half_way(self, event: ProgressEvent) -> None:
        raise NotImplementedError

    def progress_callback(self) -> Progress:
        progress = super().progress_callback()
        if self.try_number != 1:
            return progress
        met: list[bool] = []

        def watched(event: ProgressEvent) -> None:
            progress(event)
            half = event.stage == "ingest" and event.total and event.done * 2 >= event.total
            if half and not met:
                met.append(True)
                self.half_way(event)

        return watched


class FlakyShardOperator(HalfWayOperator):
    """Try 1 dies half-way through ingest; every try runs as a fresh worker would: its own
    runs root and campaign registry, so try 2 finds no run directory to resume."""

    def execute(self, context: Context) -> dict[str, Any]:
        worker = Path(ENV("BB_AF_RUNS", "runs")) / f"worker{context['ti'].try_number}"
        os.environ["BULKBATCH_DATA_DIR"] = str(worker / "data")
        self.runs_root = str(worker / "runs")
        return super().execute(context)

    def half_way(self, event: ProgressEvent) -> None:
        raise WorkerLost(f"worker lost after {event.done:,} of {event.total:,} users")


def _retried_send_dag(
    dag_id: str, operator: type[HalfWayOperator], batch_size: int, conn_id: str
) -> DAG:
    """One send task of the small audience with one retry, on its own emulator."""
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        default_args={"retries": 1, "retry_delay": timedelta(0)},
    ) as dag:
        operator(
            task_id="send",
            source=ENV("BB_AF_FLAKY_SOURCE", "flaky.csv"),
            event="welcome",
            send_options={"poll_interval": 0.2, "batch_size": batch_size},
            courier_conn_id=conn_id,
        )
    return dag


flaky_dag = _retried_send_dag("bulkbatch_flaky", FlakyShardOperator, 500, "courier_flaky")


class KilledOperator(HalfWayOperator):
    """Try 1 gets Airflow's SIGTERM half-way through ingest (try 2 is left alone)."""

    def half_way(self, event: ProgressEvent) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


killed_dag = _retried_send_dag("bulkbatch_killed", KilledOperator, 250, "courier_killed")


with DAG(
    "bulkbatch_refused",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    default_args={"retries": 2, "retry_delay": timedelta(0)},
) as refused_dag:
    # Mistakes no retry can heal: each fails on its first try, before anything is sent.
    BulkbatchSendOperator(task_id="missing_input", source="/nonexistent/audience.csv", event="e")
    BulkbatchSendOperator(
        task_id="bad_option",
        source=ENV("BB_AF_FLAKY_SOURCE", "flaky.csv"),
        event="welcome",
        send_options={"rate": -1},
    )
    BulkbatchSendOperator(
        task_id="refused_plan",
        source=ENV("BB_AF_FLAKY_SOURCE", "flaky.csv"),
        event="welcome",
        send_options={"dedupe": "fail"},
    )


# -- run as a script ------------------------------------------------------------------------
def _task_instances(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.models import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        xcoms = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.key == "return_value",
            )
        ).all()
        values = {(x.task_id, x.map_index): XComModel.deserialize_value(x) for x in xcoms}
        return sorted(
            (
                {
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "state": str(ti.state),
                    "try_number": ti.try_number,
                    "xcom": values.get((ti.task_id, ti.map_index)),
                }
                for ti in tis
            ),
            key=lambda t: (t["task_id"], t["map_index"]),
        )


def _dag_test(dag: DAG) -> dict[str, Any]:
    started = time.monotonic()
    run = dag.test(logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE)
    return {
        "state": str(run.state),
        "run_id": run.run_id,
        "seconds": round(time.monotonic() - started, 2),
        "tasks": _task_instances(dag.dag_id, run.run_id),
    }


def scenario_shards() -> dict[str, Any]:
    return {"first": _dag_test(shards_dag), "again": _dag_test(shards_dag)}


def scenario_flaky() -> dict[str, Any]:
    return {"run": _dag_test(flaky_dag)}


def scenario_killed() -> dict[str, Any]:
    return {"run": _dag_test(killed_dag)}


def scenario_refused() -> dict[str, Any]:
    return {"run": _dag_test(refused_dag)}


def scenario_units() -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from bulkbatch.integrations import airflow as op

    out: dict[str, Any] = {}
    urls = {
        "courier://:key_a@api.courier.com": "plain",
        "courier://:key_b@127.0.0.1:8089/http": "emulator",
        "courier://:key_c@eu.api.courier.com:443/https": "port",
        "courier://": "empty",
    }
    for uri, name in urls.items():
        os.environ["AIRFLOW_CONN_BB_" + name.upper()] = uri
        out["conn_" + name] = list(op.courier_connection("bb_" + name))
    os.environ["AIRFLOW_CONN_BB_JSON"] = json.dumps(
        {"conn_type": "courier", "host": "https://api.eu.courier.com/", "password": "key_d"}
    )
    out["conn_json"] = list(op.courier_connection("bb_json"))
    os.environ["AIRFLOW_CONN_BB_FTP"] = "courier://:k@host/ftp"
    try:
        op.courier_connection("bb_ftp")
    except AirflowFailException as exc:
        out["conn_ftp"] = str(exc)
    refused = {}
    for name in ("shard", "api_key", "run_dir", "wait", "colour"):
        try:
            BulkbatchSendOperator(task_id=f"t_{name}", source="x.csv", send_options={name: 1})
        except ValueError as exc:
            refused[name] = str(exc)
    for name, options in (("factory_colour", {"colour": 1}), ("factory_event", {"event": "x"})):
        try:
            sharded_send_dag(
                "x", source="a.csv", event="e", shards=2, out="o", send_options=options
            )
        except ValueError as exc:
            refused[name] = str(exc)
    out["refused"] = refused

    class Log:
        lines: list[str] = []  # noqa: RUF012 - one instance

        def info(self, fmt: str, *args: object) -> None:
            self.lines.append(fmt % args)

        warning = info

    log = Log()
    progress = op.TaskLogProgress(log, every=3600)  # type: ignore[arg-type]
    progress(ProgressEvent("start", message="run x"))
    for done in range(0, 1_000_001, 1000):
        progress(ProgressEvent("ingest", done, 1_000_000, "users"))
    for job in range(3):
        for done in range(0, 101, 10):
            progress(ProgressEvent("page", done, 100, "users", extra={"job_no": job}))
    for _ in range(500):
        progress(ProgressEvent("retry", message="POST /bulk/x: 429, waiting 1 s"))
    for n in range(3):
        progress(ProgressEvent("notice", message=f"plan warning {n}", extra={"plan": "warning"}))
    out["throttled_lines"] = log.lines
    summary = {"counts": {"rejected": 3, "input_rows": 100}, "statuses": {"ERROR": 2}}
    out["rows_failed"] = [
        op._rows_failed(summary, {"fail_on_rejects": True}),
        op._rows_failed(summary, {"max_reject_rate": 0.04}),
        op._rows_failed(summary, {"max_reject_rate": 0.05}),
        op._rows_failed(summary, {}),
    ]
    return out


def main() -> None:
    """Run the scenarios named on the command line (all by default) in one process: the
    metadata DB and Airflow's in-process API server are set up once."""
    from airflow.utils import db

    scenarios = {
        "units": scenario_units,
        "shards": scenario_shards,
        "flaky": scenario_flaky,
        "killed": scenario_killed,
        "refused": scenario_refused,
    }
    names = sys.argv[1:] or list(scenarios)
    result: dict[str, Any] = {}
    started = time.monotonic()
    db.initdb()  # a fresh SQLite metadata DB: create_all + stamp, no migrations (~3 s)
    result["initdb_seconds"] = round(time.monotonic() - started, 2)
    for name in names:
        result[name] = scenarios[name]()
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()

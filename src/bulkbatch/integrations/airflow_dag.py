"""The example DAG: one campaign in N shards, sent as mapped tasks, merged after.

Put a file like this in your DAGs folder (Airflow parses files that mention "airflow" and
"dag")::

    # dags/welcome.py -- an Airflow DAG
    from bulkbatch.integrations.airflow_dag import sharded_send_dag

    dag = sharded_send_dag(
        "welcome",
        source="/data/exports/audience-*.parquet",
        event="welcome",
        shards=8,
        out="/data/results/welcome/{{ ds }}/",
        data={"company": "Acme Corp"},
        send_options={"rate": 5},  # per shard: 8 shards x 5 req/s = 40 req/s on one key
        schedule="@daily",
    )

Each DAG run is a new campaign instance (``{{ dag.dag_id }}/{{ run_id }}``); each shard is
its own campaign inside it, and a retried shard resumes and sends nobody twice. The merge runs
when every shard succeeded; it reads the shards' run directories, so they must be on the
merge's machine (one worker, or a ``runs_root`` every worker mounts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from bulkbatch.integrations.airflow import (
    DEFAULT_CONN_ID,
    BulkbatchMergeOperator,
    BulkbatchSendOperator,
    check_send_options,
)

__all__ = ["shard_names", "sharded_send_dag"]


def shard_names(shards: int) -> list[str]:
    """``["0/N", "1/N", ...]``: the shards of an N-way split, one mapped task each."""
    if not (isinstance(shards, int) and shards >= 1):
        raise ValueError(f"shards={shards!r}: use a whole number of at least 1.")
    return [f"{i}/{shards}" for i in range(shards)]


def sharded_send_dag(
    dag_id: str,
    *,
    source: str | Sequence[str],
    event: str,
    shards: int,
    out: str,
    data: Mapping[str, Any] | str | None = None,
    send_options: Mapping[str, object] | None = None,
    courier_conn_id: str | None = DEFAULT_CONN_ID,
    runs_root: str | None = None,
    schedule: str | None = None,
    start_date: datetime = datetime(2026, 1, 1),
    retries: int = 3,
    retry_delay: timedelta = timedelta(minutes=1),
    max_active_shards: int | None = None,
    tags: Sequence[str] = ("bulkbatch",),
) -> DAG:
    """A DAG that sends one campaign in ``shards`` mapped tasks, then merges their results.

    :param source: the audience, as every shard reads it (each keeps only its own people)
    :param out: where the merged results go: a ``.parquet`` file or a folder (templated)
    :param retries: tries of a shard after the first (each resumes; nobody is sent twice)
    :param max_active_shards: how many shards send at once (None: as many as the pool allows)
    :raises ValueError: a ``send_options`` name that is not a ``bulkbatch.send`` keyword, or
        one with its own argument (so a typo fails when the DAG is parsed, not in N workers)
    """
    options = check_send_options(send_options or {})
    with DAG(
        dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=False,
        max_active_runs=1,
        tags=list(tags),
        default_args={"retries": retries, "retry_delay": retry_delay},
    ) as dag:
        send = BulkbatchSendOperator.partial(
            task_id="send_shard",
            source=source,
            event=event,
            data=data,
            send_options=options,
            courier_conn_id=courier_conn_id,
            runs_root=runs_root,
            max_active_tis_per_dagrun=max_active_shards,
        ).expand(shard=shard_names(shards))
        BulkbatchMergeOperator(task_id="merge_shards", shards=send.output, out=out, retries=0)
    return dag

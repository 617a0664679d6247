"""bulkbatch on Dagster: one partition per shard, a merged results asset, a Courier resource.

``pip install 'bulkbatch[dagster]'``. :func:`bulkbatch_assets` returns two assets:

* ``<name>_shards``, partitioned by :func:`shard_partitions` (``"0"`` … ``"N-1"``): each
  partition runs ``bulkbatch.send(source, shard="I/N", ...)``, and its materialization carries
  the shard's accounting (input rows, ingested, duplicates, rejected, filtered, skipped), the
  campaign id and the run directory as metadata. A backfill runs one partition per run
  (Dagster's default for an asset without a backfill policy), so shards run side by side,
  each on its own worker.
* ``<name>_results``, depending on every partition: ``bulkbatch.merge(...)`` of the shards'
  latest materializations into one results dataset, with the totals as metadata.

Example (``definitions.py``)::

    import dagster as dg
    from bulkbatch.integrations.dagster import CourierResource, bulkbatch_assets

    defs = dg.Definitions(
        assets=bulkbatch_assets(
            "welcome",
            "/mnt/exports/audience-*.parquet",
            event="welcome",
            shards=8,
            runs_root="/mnt/shared/bulkbatch",  # shared storage: shards and merge meet here
            send_options={"data": {"company": "Acme"}, "once_per": "welcome-2026"},
        ),
        resources={"courier": CourierResource(api_key=dg.EnvVar("COURIER_API_KEY"), rate=25)},
    )

**Retries send nobody twice.** A shard's campaign identity comes from what it sends (the
message, the audience, the shard ``I/N``, the factory's ``run_id``), never from the Dagster
run id, so a retried or re-materialized partition is the same campaign instance: on the same
storage it continues its run directory (``<runs_root>/<name>/<event>-<hash>-shardIofN``);
on a fresh worker it sends the same Idempotency-Keys and Courier replays them; a finished
shard is reported as already sent. To send an identical campaign again on purpose, deploy the
assets with a new ``run_id``. A new audience export is a new campaign by itself.

**The API key** lives in :class:`CourierResource` (from ``EnvVar``); it is never logged, put
in metadata or written to disk. ``rate`` and ``concurrency`` are per shard: with P shards
running side by side under one key, give each ``rate = account limit / P``.
"""

# No "from __future__ import annotations": Dagster reads the asset functions' annotations
# (the context type) at definition time, as objects.
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from bulkbatch.errors import BulkBatchError, UsageError
from bulkbatch.options import OPTIONS
from bulkbatch.pipeline import Run, build_spec, merge, send
from bulkbatch.progress import ProgressEvent
from bulkbatch.spec import MAX_SHARDS

__all__ = [
    "COUNT_KEYS",
    "CourierResource",
    "DagsterLogProgress",
    "bulkbatch_assets",
    "shard_partitions",
]

COUNT_KEYS = (
    "input_rows",
    "ingested",
    "duplicates",
    "rejected",
    "filtered",
    "skipped",
    "canceled",
    "unsent",
)
"""The accounting in the metadata: ``input_rows`` = the sum of the others."""

# Run options the factory sets itself, and where each one comes from instead.
_NOT_SEND_OPTIONS = {
    "event": "the factory's event=",
    "run_id": "the factory's run_id=",
    "shard": "the partition (one per shard)",
    "run_dir": "runs_root= (each shard's run directory is found or made under it)",
    "wait": "nothing: the merged asset needs finished shards",
    "api_key": "CourierResource(api_key=...)",
    "base_url": "CourierResource(base_url=...)",
    "rate": "CourierResource(rate=...)",
    "concurrency": "CourierResource(concurrency=...)",
    "http_timeout": "CourierResource(http_timeout=...)",
}


class CourierResource(dg.ConfigurableResource["CourierResource"]):
    """Where Courier is and how fast one shard may call it.

    Example: ``CourierResource(api_key=dg.EnvVar("COURIER_API_KEY"), rate=25)``. Unset
    fields fall back to ``COURIER_API_KEY`` / ``COURIER_BASE_URL`` in the worker's
    environment and bulkbatch's defaults.
    """

    api_key: str | None = Field(
        default=None,
        repr=False,  # never in a repr, a log line or metadata
        description="Courier API key; use EnvVar('COURIER_API_KEY'). Never logged or stored.",
    )
    base_url: str | None = Field(
        default=None, description="Courier API root (default https://api.courier.com)."
    )
    rate: float | None = Field(
        default=None,
        description="Most requests per second of ONE shard; shards sharing a key share the "
        "account's limit (rate = limit / shards running at once).",
    )
    concurrency: int | None = Field(
        default=None,
        description="Most writes in flight at once, per shard (reads widen up to 4x).",
    )
    http_timeout: float | None = Field(
        default=None, description="Seconds to wait for one HTTP response before retrying it."
    )

    def send_keywords(self) -> dict[str, Any]:
        """The connection keywords of ``bulkbatch.send`` (the key among them: never log it)."""
        return {
            "api_key": self.api_key or None,
            "base_url": self.base_url or None,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "http_timeout": self.http_timeout,
        }


class DagsterLogProgress:
    """bulkbatch progress as log lines (``progress=DagsterLogProgress(context.log)``).

    One line per stage at most every ``every`` seconds; a stage's first and last lines always
    show, and retries, throttles and notices always show (as warnings): a long wait is never
    silent, and a 10M-person send does not flood the event log.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage in ("retry", "notice"):
            self.log.warning(f"[{event.stage}] {event.message}")
            return
        now = self.clock()
        finished = event.total is not None and event.done >= event.total
        last = self._last.get(event.stage)
        if last is not None and not finished and now - last < self.every:
            return
        self._last[event.stage] = now
        self.log.info(_line(event))


def _line(event: ProgressEvent) -> str:
    parts = [f"[{event.stage}]"]
    if event.total is not None:
        parts.append(f"{event.done:,}/{event.total:,} {event.unit}".rstrip())
    elif event.done:
        parts.append(f"{event.done:,} {event.unit}".rstrip())
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


def shard_partitions(shards: int) -> dg.StaticPartitionsDefinition:
    """``"0"`` … ``str(shards - 1)``: partition ``"I"`` is ``bulkbatch send --shard I/N``."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise UsageError(f"shards={shards!r} must be a whole number from 1 to {MAX_SHARDS}.")
    return dg.StaticPartitionsDefinition([str(i) for i in range(shards)])


def _check_send_options(
    source: str | Path | Sequence[str | Path],
    send_options: Mapping[str, object],
    fixed: Mapping[str, object],
) -> None:
    """Refuse, when the definitions load, what every shard would refuse when it runs."""
    for name in send_options:
        if name in _NOT_SEND_OPTIONS:
            raise UsageError(
                f"send_options may not set {name!r}: it comes from {_NOT_SEND_OPTIONS[name]}."
            )
        if name not in OPTIONS:
            known = ", ".join(sorted(set(OPTIONS) - set(_NOT_SEND_OPTIONS)))
            raise UsageError(f"send_options: unknown option {name!r}. Known options: {known}.")
    spec = build_spec(source, {**send_options, **fixed})
    spec.campaign.message()  # no event nor template: say so now, not in every shard


def _metadata_value(name: str, value: Any) -> dg.MetadataValue[Any]:
    if name in ("run_dir", "results", "out"):
        return dg.MetadataValue.path(str(value))
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, Mapping | list):
        return dg.MetadataValue.json(value)
    return dg.MetadataValue.text(str(value))


def _shard_metadata(run: Run, run_id: str | None) -> dict[str, dg.MetadataValue[Any]]:
    """A finished shard's accounting, campaign and run directory (never the key)."""
    summary = run.summary()
    counts = summary.get("counts") or {}
    shard = summary.get("shard") or {}
    values: dict[str, Any] = {k: int(counts.get(k, 0)) for k in COUNT_KEYS}
    values.update(
        shard=f"{shard.get('index', 0)}/{shard.get('count', 1)}",
        campaign=summary.get("campaign", ""),
        family=shard.get("family", ""),
        instance=run_id or "",
        accounting_ok=bool(summary.get("accounting_ok")),
        already_sent=bool(summary.get("already_sent")),
        rejected_by_reason=dict(summary.get("rejected_by_reason") or {}),
        statuses=dict(summary.get("statuses") or {}),
        run_dir=str(run.path),
        results=summary.get("results") or str(run.path / "results.parquet"),
        elapsed_seconds=float(summary.get("elapsed_seconds") or 0.0),
    )
    return {k: _metadata_value(k, v) for k, v in values.items()}


def _failure(exc: BulkBatchError, shard: str, runs_root: Path) -> dg.Failure:
    """A bulkbatch error as a Dagster failure: bad usage (exit 2) is not worth a retry."""
    return dg.Failure(
        description=f"shard {shard}: {exc}",
        metadata={"shard": shard, "runs_root": dg.MetadataValue.path(str(runs_root))},
        allow_retries=exc.exit_code != 2,
    )


def _latest_run_dirs(
    context: dg.AssetExecutionContext, shards_key: dg.AssetKey, shards: int
) -> list[str]:
    """The run directory of each shard's latest materialization (all must exist)."""
    found: list[str] = []
    missing: list[str] = []
    for i in range(shards):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=shards_key, asset_partitions=[str(i)]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        entry = materialization.metadata.get("run_dir") if materialization else None
        if entry is None:
            missing.append(str(i))
        else:
            found.append(str(entry.value))
    if missing:
        raise dg.Failure(
            description=f"{shards_key.to_user_string()}: partition(s) {', '.join(missing)} of "
            f"{shards} have not been materialized. Materialize every shard, then merge.",
            allow_retries=False,
        )
    return found


def bulkbatch_assets(
    name: str,
    source: str | Path | Sequence[str | Path],
    *,
    event: str | None = None,
    shards: int,
    runs_root: str | Path,
    run_id: str | None = None,
    out: str | Path | None = None,
    send_options: Mapping[str, object] | None = None,
    resource_key: str = "courier",
    group_name: str | None = None,
    deps: Iterable[dg.AssetKey | str | dg.AssetsDefinition | dg.AssetSpec] = (),
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    log_every: float = 5.0,
) -> list[dg.AssetsDefinition]:
    """A partitioned asset sending one shard per partition, and the merged results asset.

    :param name: asset names ``<name>_shards`` and ``<name>_results`` (letters, digits, ``_``)
    :param source: the audience: a path, glob or folder, or a list of them, as every worker
        sees it (a shard reads the whole input and keeps its own rows)
    :param event: the Courier event (or pass ``template`` in ``send_options``)
    :param shards: how many shards (partitions ``"0"`` … ``str(shards - 1)``)
    :param runs_root: where shards keep their run directories (``<runs_root>/<name>/…``);
        shared storage when shards run on several machines: the merge reads every shard there
    :param run_id: the campaign instance name; the same name is the same campaign (a retry
        sends nobody twice), a new name sends an identical campaign again
    :param out: the merged results: a folder (Hive-partitioned by ``shard``, the default
        ``<runs_root>/<name>/results``) or a ``.parquet`` file
    :param send_options: any other run option of ``bulkbatch.send`` by keyword name
        (``data``, ``mapping``, ``where``, ``once_per``, ``batch_size``, ``fail_on_rejects`` …);
        checked now, so a typo fails when the definitions load
    :param resource_key: the key of the :class:`CourierResource` in ``Definitions``
    :param deps: upstream assets (e.g. the audience export), for lineage and automation
    :param retry_policy: Dagster retries of a failed shard (each resumes the shard)
    :param pool: a Dagster concurrency pool for the shards: its limit is how many shards
        send at once, so ``CourierResource(rate=account limit / pool limit)`` stays within
        the account's limit
    :param log_every: seconds between progress lines per stage in the run's log
    """
    options: dict[str, Any] = dict(send_options or {})
    partitions = shard_partitions(shards)
    fixed = {"event": event, "run_id": run_id, "shard": f"0/{shards}"}
    _check_send_options(source, options, fixed)
    root = Path(runs_root) / name
    target: str | Path = out if out is not None else root / "results"  # s3://… stays text
    shards_key = dg.AssetKey(f"{name}_shards")

    @dg.asset(
        key=shards_key,
        partitions_def=partitions,
        retry_policy=retry_policy,
        pool=pool,
        deps=list(deps),
        required_resource_keys={resource_key},
        group_name=group_name,
        metadata={"shards": shards, "runs_root": dg.MetadataValue.path(str(root))},
        description=f"Courier bulk send ({event or 'template'}): partition I sends shard "
        f"I/{shards} of the audience (bulkbatch send --shard I/{shards})",
    )
    def shard_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult[Any]:
        courier = getattr(context.resources, resource_key)
        if not isinstance(courier, CourierResource):
            raise dg.Failure(f"resource {resource_key!r} is not a CourierResource")
        shard = f"{int(context.partition_key)}/{shards}"
        context.log.info(f"bulkbatch: sending shard {shard} (runs under {root})")
        try:
            run = send(
                source,
                **options,
                event=event,
                run_id=run_id,
                shard=shard,
                runs_root=root,
                progress=DagsterLogProgress(context.log, every=log_every),
                **courier.send_keywords(),
            )
        except BulkBatchError as exc:
            raise _failure(exc, shard, root) from exc
        metadata = _shard_metadata(run, run_id)
        why = run.rows_failed()
        if why:
            raise dg.Failure(
                description=f"shard {shard}: {why}", metadata=metadata, allow_retries=False
            )
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=dg.AssetKey(f"{name}_results"),
        deps=[shard_asset],
        group_name=group_name,
        metadata={"out": dg.MetadataValue.path(str(target))},
        description=f"bulkbatch merge of the {shards} shards of {shards_key.to_user_string()}",
    )
    def results_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult[Any]:
        run_dirs = _latest_run_dirs(context, shards_key, shards)
        try:
            info = merge(
                run_dirs, target, progress=DagsterLogProgress(context.log, every=log_every)
            )
        except BulkBatchError as exc:
            raise dg.Failure(description=f"merge: {exc}", allow_retries=False) from exc
        totals: dict[str, Any] = {"input_rows": info.input_rows, **info.counts}
        values: dict[str, Any] = {k: int(totals.get(k, 0)) for k in COUNT_KEYS}
        values.update(
            shards=info.shards,
            family=info.family,
            out=info.out,
            dataset=info.dataset,
            run_dirs=list(run_dirs),
        )
        return dg.MaterializeResult(metadata={k: _metadata_value(k, v) for k, v in values.items()})

    return [shard_asset, results_asset]

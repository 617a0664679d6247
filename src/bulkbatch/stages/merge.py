"""``bulkbatch merge``: the shards of one campaign (``--shard I/N``) as one results dataset.

Each shard's run directory holds ``summary.json`` (with its shard, the campaign family every
shard of one campaign shares, and the whole input's row count) and ``results.parquet`` (one
row per input row of that shard). Merging:

1. reads every ``summary.json`` and refuses, naming the run directories, a set that mixes
   campaigns (another family or shard count), names a shard twice, misses a shard, or holds a
   shard whose own accounting did not add up;
2. copies the shards' rows into one output with a ``shard`` column, in DuckDB, streamed
   (memory stays under the same cap as a run): a ``.parquet`` path is one file; any other path
   is a Hive-partitioned dataset (``shard=0/…parquet``) with ``_summary.json`` beside it (a
   leading underscore: Arrow, DuckDB and Spark readers skip it);
3. checks the accounting across shards on what it wrote: every input row exactly once
   (``row_number`` counts from 1 in the whole input, so the merged row numbers are distinct
   and as many as the input's rows), and ``input rows = ingested + duplicates + rejected +
   filtered + skipped + canceled + unsent``.

The output is written beside its final name and moved into place, so a reader never sees half
a merge; an existing output is replaced only when it is a merge output itself.

Object storage: a shard may be an ``s3://`` folder holding its ``summary.json`` and
``results.parquet`` (what ``bulkbatch results RUN_DIR --out s3://bucket/prefix/`` writes, for
shards on workers that share no disk); both are downloaded to a temporary folder first. An
``s3://`` output is built locally the same way, then uploaded (:mod:`bulkbatch.storage`): one
object, or the dataset's files with ``_summary.json`` last, so a reader that waits for
``_summary.json`` never reads a partial dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bulkbatch.db import PARQUET_OPTIONS, configure_connection, fetch_one, quote_literal
from bulkbatch.errors import AccountingError, StateError, UsageError
from bulkbatch.files import atomic_write_bytes
from bulkbatch.storage import destination, download, is_remote, upload

__all__ = ["COUNT_KEYS", "MergeInfo", "ShardResult", "merge_shards", "read_shards"]

COUNT_KEYS = ("ingested", "duplicates", "rejected", "filtered", "skipped", "canceled", "unsent")
"""The outcomes every input row ends in exactly one of (plus ``input_rows``)."""
SUMMARY_NAME = "_summary.json"


@dataclass(frozen=True)
class ShardResult:
    """One shard's finished run, as its ``summary.json`` describes it."""

    run_dir: str
    """The run directory (or ``s3://`` folder) as given."""
    index: int
    count: int
    family: str
    total_input_rows: int
    results: Path
    counts: dict[str, int]
    campaign: str


@dataclass(frozen=True)
class MergeInfo:
    """What :func:`merge_shards` wrote: the totals across shards, which add up."""

    out: str
    shards: int
    family: str
    input_rows: int
    counts: dict[str, int]
    per_shard: list[dict[str, Any]] = field(default_factory=list)
    dataset: bool = False
    """True: a Hive-partitioned folder; False: one Parquet file."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "shards": self.shards,
            "family": self.family,
            "input_rows": self.input_rows,
            "counts": dict(self.counts),
            "per_shard": list(self.per_shard),
            "dataset": self.dataset,
            "seconds": round(self.seconds, 3),
        }


def _unfinished(run_dir: Path, label: str) -> str:
    """Why a shard without summary.json cannot be merged, and the step that finishes it: a
    run ``bulkbatch plan`` started is resumed as a plan, so only a send sends it."""
    planned = False
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        raw = orjson.loads((run_dir / "state.json").read_bytes())
        planned = isinstance(raw, dict) and raw.get("plan_only") is True
    if planned:
        return (
            f"{label} was only planned ('bulkbatch plan' started it), so it has sent nobody. "
            "Send that shard with 'bulkbatch send' and the same input, options and --shard, "
            "then merge."
        )
    return (
        f"{label} has no summary.json: its shard has not finished. Run 'bulkbatch resume "
        f"{label}' (or the shard's send again) and merge after."
    )


def _summary(run_dir: Path, label: str) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not run_dir.is_dir():
        raise StateError(f"Shard run directory not found: {label}.")
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateError(_unfinished(run_dir, label)) from None
    except orjson.JSONDecodeError as exc:
        raise StateError(
            f"{label}/summary.json is corrupt ({exc}); run 'bulkbatch results' on its run "
            "directory to rewrite it."
        ) from None
    if not isinstance(raw, dict):
        raise StateError(f"{label}/summary.json is not a JSON object; run 'bulkbatch results'.")
    return raw


def _shard_of(run_dir: Path, label: str) -> ShardResult:
    raw = _summary(run_dir, label)
    shard = raw.get("shard")
    if not isinstance(shard, dict) or "family" not in shard:
        raise UsageError(
            f"{label} is not a shard: it was sent without --shard. 'bulkbatch merge' "
            "combines the shards of one campaign (bulkbatch send ... --shard I/N)."
        )
    if not raw.get("accounting_ok", False):
        raise AccountingError(
            f"The accounting of shard {shard['index']}/{shard['count']} ({label}) does "
            f"not add up: {'; '.join(raw.get('problems') or ['see its summary.json'])}."
        )
    results = run_dir / "results.parquet"
    if not results.is_file():
        results = Path(str(raw.get("results", "")))
    if not results.is_file():
        raise StateError(
            f"{label} has no results.parquet; run 'bulkbatch results' on its run directory."
        )
    counts = raw.get("counts") or {}
    return ShardResult(
        run_dir=label,
        index=int(shard["index"]),
        count=int(shard["count"]),
        family=str(shard["family"]),
        total_input_rows=int(shard["total_input_rows"]),
        results=results,
        counts={k: int(counts.get(k, 0)) for k in ("input_rows", *COUNT_KEYS)},
        campaign=str(raw.get("campaign", "")),
    )


def _fetch(source: str, tmp: Path, n: int) -> Path:
    """A local folder with the shard's summary.json and results.parquet: the run directory
    itself, or a download of an ``s3://`` folder."""
    if not is_remote(source):
        return Path(source)
    base = source.rstrip("/")
    local = tmp / f"shard-{n}"
    local.mkdir(parents=True)
    for name in ("summary.json", "results.parquet"):
        download(f"{base}/{name}", local / name)
    return local


def read_shards(run_dirs: Sequence[str | Path], tmp: Path | None = None) -> list[ShardResult]:
    """Every shard's summary, checked to be one complete campaign (sorted by shard).

    :param tmp: where ``s3://`` shards are downloaded (needed only for those)

    :raises UsageError: no run directory, a directory that is not a shard, or shards of
        different campaigns / shard counts, or a shard given twice
    :raises StateError: a shard without results; shards missing (named)
    :raises AccountingError: a shard whose own accounting did not add up
    """
    if not run_dirs:
        raise UsageError("Give the run directories of every shard to merge.")
    shards = []
    for n, d in enumerate(run_dirs):
        if is_remote(d) and tmp is None:
            raise UsageError(f"{d}: s3:// shards are read by merge_shards, which downloads them.")
        shards.append(_shard_of(_fetch(str(d), tmp or Path("."), n), str(d)))
    first = shards[0]
    for s in shards[1:]:
        if (s.family, s.count, s.total_input_rows) != (
            first.family,
            first.count,
            first.total_input_rows,
        ):
            raise UsageError(
                f"{s.run_dir} (shard {s.index}/{s.count}) is not of the same campaign as "
                f"{first.run_dir} (shard {first.index}/{first.count}): other inputs, options "
                "or shard count. Merge the shards of one campaign only."
            )
    seen: dict[int, ShardResult] = {}
    for s in shards:
        if s.index in seen:
            raise UsageError(
                f"Shard {s.index}/{s.count} is given twice: {seen[s.index].run_dir} and "
                f"{s.run_dir}. Give each shard's run directory once."
            )
        seen[s.index] = s
    missing = [i for i in range(first.count) if i not in seen]
    if missing:
        names = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise StateError(
            f"Incomplete: shard(s) {names} of {first.count} are missing. Finish them and pass "
            "every shard's run directory."
        )
    return [seen[i] for i in range(first.count)]


def _source_sql(shards: Sequence[ShardResult]) -> str:
    parts = [
        f"SELECT *, {s.index}::INTEGER AS shard FROM read_parquet({quote_literal(str(s.results))})"
        for s in shards
    ]
    return " UNION ALL BY NAME ".join(parts)


def _prepare_target(out: Path, dataset: bool) -> Path:
    """A fresh temporary path beside ``out``; refuses to replace what merge did not write."""
    if out.exists():
        if dataset and not (out.is_dir() and (out / SUMMARY_NAME).is_file()):
            raise StateError(
                f"{out} exists and is not a 'bulkbatch merge' output; choose another --out "
                "or remove it."
            )
        if not dataset and out.is_dir():
            raise StateError(f"{out} is a folder; give a .parquet file name or a new folder.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"Cannot create {out.parent}: {exc.strerror or exc}.") from None
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _copy(con: duckdb.DuckDBPyConnection, shards: Sequence[ShardResult], target: Path,
          dataset: bool) -> None:  # fmt: skip
    source = _source_sql(shards)
    if dataset:
        con.execute(
            f"COPY ({source}) TO {quote_literal(str(target))} "
            f"({PARQUET_OPTIONS}, PARTITION_BY (shard))"
        )
    else:
        con.execute(f"COPY ({source}) TO {quote_literal(str(target))} ({PARQUET_OPTIONS})")


def _check(
    con: duckdb.DuckDBPyConnection, written: str, total: int, counts: dict[str, int]
) -> None:
    rows, distinct, low, high = fetch_one(
        con,
        f"SELECT count(*), count(DISTINCT row_number), min(row_number), max(row_number) "
        f"FROM {written}",
    )
    problems = []
    if int(rows) != total or int(distinct) != total:
        problems.append(
            f"{rows} rows ({distinct} distinct input rows) were merged for {total} input rows"
        )
    elif total and (int(low), int(high)) != (1, total):
        problems.append(f"input row numbers run {low}..{high}, not 1..{total}")
    outcomes = sum(counts[k] for k in COUNT_KEYS)
    if outcomes != total:
        problems.append(f"the outcomes add up to {outcomes}, not {total} input rows")
    if problems:
        raise AccountingError(
            f"The merged accounting does not add up: {'; '.join(problems)}. Report this as a "
            "bug, with the shards' summary.json files."
        )


def merge_shards(run_dirs: Sequence[str | Path], out: str | Path) -> MergeInfo:
    """Merge every shard of one campaign into ``out`` (rules: this module's docstring).

    :raises UsageError, StateError, AccountingError: see :func:`read_shards`; an output that
        cannot be written; merged rows that do not add up
    """
    started = time.monotonic()
    remote = is_remote(out)
    name = str(out).rstrip("/").rpartition("/")[2] if remote else Path(out).name
    dataset = not name.lower().endswith(".parquet")
    if remote and not dataset:
        destination(str(out))  # a bad URL fails before any work
    local_out = Path(tempfile.mkdtemp(prefix="bulkbatch-merge-")) / name if remote else Path(out)
    tmp = _prepare_target(local_out, dataset)
    try:
        shards = read_shards(run_dirs, tmp / "shards")
        info = _merge(shards, local_out, tmp, dataset, started)
        if remote:
            _upload(local_out, str(out), dataset)
            info = dataclasses.replace(info, out=str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if remote:
            shutil.rmtree(local_out.parent, ignore_errors=True)
    return info


def _upload(local: Path, url: str, dataset: bool) -> None:
    if not dataset:
        upload(local, url)
        return
    base = url.rstrip("/")
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != SUMMARY_NAME)
    for path in [*files, local / SUMMARY_NAME]:  # the summary last: the dataset is complete
        upload(path, f"{base}/{path.relative_to(local).as_posix()}")


def _merge(
    shards: Sequence[ShardResult], out: Path, tmp: Path, dataset: bool, started: float
) -> MergeInfo:
    counts = {k: sum(s.counts[k] for s in shards) for k in ("input_rows", *COUNT_KEYS)}
    total = shards[0].total_input_rows
    target = tmp / "data" if dataset else tmp / out.name
    try:
        con = duckdb.connect()
        try:
            configure_connection(con)
            con.execute(f"SET temp_directory = {quote_literal(str(tmp / '.spill'))}")
            _copy(con, shards, target, dataset)
            glob = str(target / "**" / "*.parquet") if dataset else str(target)
            _check(con, f"read_parquet({quote_literal(glob)})", total, counts)
        finally:
            con.close()
        info = MergeInfo(
            out=str(out),
            shards=len(shards),
            family=shards[0].family,
            input_rows=total,
            counts=counts,
            per_shard=[
                {"shard": s.index, "run_dir": str(s.run_dir), "campaign": s.campaign, **s.counts}
                for s in shards
            ],
            dataset=dataset,
            seconds=time.monotonic() - started,
        )
        if dataset:
            atomic_write_bytes(
                target / SUMMARY_NAME, orjson.dumps(info.to_dict(), option=orjson.OPT_INDENT_2)
            )
            if out.exists():
                shutil.rmtree(out)
        target.replace(out)
    except duckdb.Error as exc:
        raise StateError(f"Cannot write {out}: {str(exc).splitlines()[0]}") from None
    return info

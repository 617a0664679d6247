"""``bulkbatch merge`` with shards and output on object storage (a real S3-compatible server):
shards on workers that share no disk publish their results to S3; the merge reads them there
and writes the merged dataset back."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest

import bulkbatch
from bulkbatch.errors import StateError
from tests.support import SAMPLE

if TYPE_CHECKING:
    from tests.s3server import S3

pytest_plugins = ["tests.s3server"]

N = 3


def _publish(s3: S3, run: bulkbatch.Run, prefix: str) -> str:
    """What a shard's worker leaves for the merge: ``bulkbatch results RUN_DIR --out
    s3://bucket/prefix/`` puts its results and summary under a prefix."""
    run.results(out=s3.url(prefix + "/"))
    assert {f"{prefix}/results.parquet", f"{prefix}/summary.json"} <= set(s3.listing())
    return s3.url(prefix)


def test_merge_reads_shards_from_s3_and_writes_the_dataset_there(s3: S3, tmp_path: Path) -> None:
    runs = [
        bulkbatch.send(
            SAMPLE, event="welcome", emulator="immediate", runs_root=tmp_path, shard=f"{i}/{N}"
        )
        for i in range(N)
    ]
    shards = [_publish(s3, r, f"welcome/shard-{i}") for i, r in enumerate(runs)]
    info = bulkbatch.merge(shards, s3.url("results/welcome/"))
    assert info.out == s3.url("results/welcome/") and info.dataset
    assert info.input_rows == 2000 == sum(info.counts[k] for k in info.counts if k != "input_rows")
    keys = s3.listing()
    assert "results/welcome/_summary.json" in keys
    parts = sorted(
        k for k in keys if k.startswith("results/welcome/shard=") and k.endswith(".parquet")
    )
    assert [k.split("/")[2] for k in parts] == [f"shard={i}" for i in range(N)]
    rows = pl.concat([pl.from_arrow(pq.read_table(io.BytesIO(s3.get(k)))) for k in parts])
    assert rows.height == 2000 and rows["row_number"].n_unique() == 2000
    summary = orjson.loads(s3.get("results/welcome/_summary.json"))
    assert summary["counts"] == info.counts

    one = bulkbatch.merge([r.path for r in runs], s3.url("results/welcome.parquet"))
    table = pq.read_table(io.BytesIO(s3.get("results/welcome.parquet")))
    assert not one.dataset and table.num_rows == 2000


def test_a_shard_missing_on_s3_is_named(s3: S3, tmp_path: Path) -> None:
    run = bulkbatch.send(
        SAMPLE, event="welcome", emulator="immediate", runs_root=tmp_path, shard=f"0/{N}"
    )
    good = _publish(s3, run, "w/shard-0")
    with pytest.raises(Exception, match=r"w/shard-9") as caught:
        bulkbatch.merge([good, s3.url("w/shard-9")], tmp_path / "out")
    assert isinstance(caught.value, bulkbatch.BulkBatchError)
    with pytest.raises(StateError, match=r"shard\(s\) 1, 2 of 3 are missing"):
        bulkbatch.merge([good], tmp_path / "out")

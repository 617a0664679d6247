"""``--shard I/N``: the shards partition the audience exactly, each is its own campaign, and
``bulkbatch.merge`` puts them back together with the accounting intact."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bulkbatch
from bulkbatch.errors import AccountingError, StateError, UsageError
from bulkbatch.spec import parse_shard
from bulkbatch.stages.plan import PlanOptions, build_plan
from tests.support import SAMPLE

N = 4


def _send(runs: Path, shard: str | None, **kw: object) -> bulkbatch.Run:
    return bulkbatch.send(
        SAMPLE,
        event="welcome",
        emulator="immediate",
        runs_root=runs,
        shard=shard,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bulkbatch.Run], bulkbatch.Run]:
    runs = tmp_path_factory.mktemp("runs")
    shards = [_send(runs, f"{i}/{N}") for i in range(N)]
    whole = _send(runs, None)
    return shards, whole


def test_shards_partition_the_audience_exactly(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run],
) -> None:
    shards, whole = sharded
    frames = [r.read_results().with_columns(pl.lit(i).alias("shard")) for i, r in enumerate(shards)]
    merged = pl.concat(frames, how="diagonal_relaxed")
    # every input row in exactly one shard
    assert merged["row_number"].sort().to_list() == list(range(1, 2001))
    # with the same outcome, reason and recipient as the unsharded run
    cols = ["row_number", "outcome", "reason_code", "recipient"]
    assert merged.select(cols).sort("row_number").equals(whole.read_results().select(cols))
    # all rows of a recipient (duplicates included) are in one shard; no recipient: shard 0
    by_recipient = merged.filter(pl.col("recipient").is_not_null()).group_by("recipient")
    assert by_recipient.agg(pl.col("shard").n_unique())["shard"].max() == 1
    no_address = merged.filter(pl.col("reason_code") == "no_address")
    assert no_address.height > 0 and set(no_address["shard"].to_list()) == {0}
    # the counts add up to the unsharded run's
    for key in ("input_rows", "ingested", "duplicates", "rejected", "filtered", "skipped"):
        assert sum(r.summary()["counts"][key] for r in shards) == whole.summary()["counts"][key]


def test_each_shard_is_its_own_campaign_of_one_family(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run],
) -> None:
    shards, whole = sharded
    summaries = [r.summary() for r in shards]
    campaigns = {s["campaign"] for s in summaries} | {whole.summary()["campaign"]}
    assert len(campaigns) == N + 1
    assert len({s["shard"]["family"] for s in summaries}) == 1
    assert [s["shard"]["index"] for s in summaries] == list(range(N))
    assert all(s["shard"]["total_input_rows"] == 2000 for s in summaries)
    assert whole.summary()["shard"] is None
    assert [r.path.name.rsplit("-", 1)[1] for r in shards] == [f"shard{i}of{N}" for i in range(N)]


def test_the_same_shard_again_continues_its_run(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run], tmp_path: Path
) -> None:
    shards, _ = sharded
    again = _send(shards[2].path.parent, f" 2/{N}")  # spelled differently: the same shard
    assert again.path == shards[2].path
    assert again.summary()["counts"] == shards[2].summary()["counts"]


@pytest.mark.parametrize("out", ["merged.parquet", "merged"])
def test_merge_adds_up(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run], tmp_path: Path, out: str
) -> None:
    shards, whole = sharded
    info = bulkbatch.merge([r.path for r in reversed(shards)], tmp_path / out)
    c = info.counts
    assert info.shards == N and info.input_rows == 2000 == c["input_rows"]
    assert sum(c[k] for k in ("ingested", "duplicates", "rejected", "filtered", "skipped")) == 2000
    assert c["ingested"] == whole.summary()["counts"]["ingested"]
    target = tmp_path / out
    read = (
        pl.read_parquet(target)
        if info.dataset is False
        else pl.read_parquet(target / "**" / "*.parquet", hive_partitioning=True)
    )
    assert read.height == 2000 and read["row_number"].n_unique() == 2000
    assert sorted(read["shard"].unique().to_list()) == list(range(N))
    if info.dataset:
        meta = orjson.loads((target / "_summary.json").read_bytes())
        assert meta["counts"] == c and len(meta["per_shard"]) == N
        # merging again replaces the earlier output
        again = bulkbatch.merge([r.path for r in shards], target)
        assert again.counts == c


def test_merge_refuses_incomplete_twice_mixed_and_unsharded(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run], tmp_path: Path
) -> None:
    shards, whole = sharded
    dirs = [r.path for r in shards]
    with pytest.raises(StateError, match=r"shard\(s\) 1, 3 of 4 are missing"):
        bulkbatch.merge([dirs[0], dirs[2]], tmp_path / "m")
    with pytest.raises(UsageError, match="Shard 2/4 is given twice"):
        bulkbatch.merge([*dirs, dirs[2]], tmp_path / "m")
    with pytest.raises(UsageError, match="not a shard"):
        bulkbatch.merge([*dirs[:3], whole.path], tmp_path / "m")
    other = _send(tmp_path / "other", f"3/{N}", data={"offer": "x"})  # another campaign
    with pytest.raises(UsageError, match="not of the same campaign"):
        bulkbatch.merge([*dirs[:3], other.path], tmp_path / "m")
    other_count = _send(tmp_path / "other", "1/2")
    with pytest.raises(UsageError, match="not of the same campaign"):
        bulkbatch.merge([*dirs, other_count.path], tmp_path / "m")
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(StateError, match="not a 'bulkbatch merge' output"):
        bulkbatch.merge(dirs, keep)
    assert (keep / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "m").exists()


def test_merge_refuses_an_unfinished_or_unbalanced_shard(
    sharded: tuple[list[bulkbatch.Run], bulkbatch.Run], tmp_path: Path
) -> None:
    shards, _ = sharded
    import shutil

    copies = []
    for r in shards:
        copies.append(tmp_path / r.path.name)
        shutil.copytree(r.path, copies[-1])
    summary = copies[1] / "summary.json"
    raw = orjson.loads(summary.read_bytes())
    raw["accounting_ok"], raw["problems"] = False, ["3 rows are missing"]
    summary.write_bytes(orjson.dumps(raw))
    with pytest.raises(AccountingError, match=r"shard 1/4 .* 3 rows are missing"):
        bulkbatch.merge(copies, tmp_path / "m")
    summary.unlink()
    with pytest.raises(StateError, match=r"has no summary\.json"):
        bulkbatch.merge(copies, tmp_path / "m")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("4/4", "needs I below N"),
        ("1of4", "is not I/N"),
        ("-1/4", "is not I/N"),
        ("0/0", "needs N from 1"),
    ],
)
def test_bad_shard_values_name_the_flag(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=rf"--shard '{text}' {why}.*\(Python: shard=\)"):
        parse_shard(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    emails=st.lists(st.sampled_from([f"u{i}@x.io" for i in range(12)] + [None]), max_size=40),
    count=st.integers(min_value=1, max_value=5),
)
def test_shard_rows_are_a_partition_by_recipient(emails: list[str | None], count: int) -> None:
    """Property: for any audience, the shards' rows are disjoint, cover every row, keep all of
    a recipient's rows together, put rows without one in shard 0, and find the same duplicates
    as the unsharded plan."""
    frame = pl.DataFrame({"email": emails}, schema={"email": pl.String})

    def planned(shard: tuple[int, int] | None) -> tuple[set[int], set[int], set[int]]:
        con = duckdb.connect()
        con.register("frame", frame)
        con.execute(
            "CREATE TABLE inputs AS SELECT row_number() OVER () AS row_number, 'f' AS source, "
            "* FROM frame"
        )
        build_plan(con, PlanOptions(shard=shard))
        sets = tuple(
            {int(r[0]) for r in con.execute(f"SELECT row_number FROM {t}").fetchall()}
            for t in ("plan", "duplicates", "rejects")
        )
        con.close()
        return sets  # type: ignore[return-value]

    whole = planned(None)
    parts = [planned((i, count)) for i in range(count)]
    for k in range(3):
        union: set[int] = set()
        for p in parts:
            assert not union & p[k]
            union |= p[k]
        assert union == whole[k]
    no_recipient = {i + 1 for i, e in enumerate(emails) if e is None}
    assert no_recipient <= parts[0][2]

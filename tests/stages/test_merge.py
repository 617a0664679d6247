"""``bulkbatch merge`` refusing shards that have not finished, with the step that finishes
them (the end-to-end merge is in tests/e2e/test_shards.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import bulkbatch
from bulkbatch.errors import StateError
from tests.support import SAMPLE


def test_a_planned_shard_is_named_as_planned_not_sent_to_resume(tmp_path: Path) -> None:
    """Merge said 'Run bulkbatch resume RUN_DIR' for every unfinished shard; resuming a run
    'bulkbatch plan' started sends nobody (round 14), so for a planned shard that advice
    went round in a circle."""
    planned = tmp_path / "s0"
    bulkbatch.plan(SAMPLE, event="welcome", shard="0/2", run_dir=planned)
    with bulkbatch.Emulator(progression="immediate") as emu:
        bulkbatch.send(
            SAMPLE,
            event="welcome",
            shard="1/2",
            base_url=emu.url,
            poll_interval=0.02,
            run_dir=tmp_path / "s1",
        )
    with pytest.raises(StateError) as e:
        bulkbatch.merge([planned, tmp_path / "s1"], tmp_path / "out.parquet")
    assert str(e.value) == (
        f"{planned} was only planned ('bulkbatch plan' started it), so it has sent nobody. "
        "Send that shard with 'bulkbatch send' and the same input, options and --shard, "
        "then merge."
    )

    state = planned / "state.json"  # as a send that stopped before it finished leaves it
    raw = orjson.loads(state.read_bytes())
    state.write_bytes(orjson.dumps({**raw, "plan_only": False}))
    with pytest.raises(StateError) as e:
        bulkbatch.merge([planned, tmp_path / "s1"], tmp_path / "out.parquet")
    assert str(e.value) == (
        f"{planned} has no summary.json: its shard has not finished. Run 'bulkbatch resume "
        f"{planned}' (or the shard's send again) and merge after."
    )

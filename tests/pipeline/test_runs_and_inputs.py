"""`bulkbatch runs` lists campaigns at a glance (#14); a resume never loads an input file that
was replaced after the run started (#15 defect 8)."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner

import bulkbatch
from bulkbatch.cli import cli
from bulkbatch.errors import InputError, StateError
from bulkbatch.state import RunState


def _audience(path: Path, n: int) -> Path:
    pl.DataFrame({"user_id": [f"u{i}" for i in range(n)]}).write_csv(path)
    return path


def test_runs_lists_campaign_state_and_counts(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.csv", 30)
    runs = tmp_path / "runs"
    planned = bulkbatch.plan(audience, event="welcome", run_dir=runs / "first")
    with bulkbatch.Emulator(progression="immediate") as emu:
        sent = bulkbatch.send(
            audience, event="promo", base_url=emu.url, poll_interval=0.02, run_dir=runs / "second"
        )
    result = CliRunner().invoke(cli, ["runs", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    listed = {Path(r["run_dir"]).name: r for r in orjson.loads(result.output)}
    # A plan's run is not waiting to be sent: resuming it plans, and only send sends it.
    assert listed["first"]["stage"] == "planned" and listed["first"]["to_send"] == 30
    assert listed["second"]["stage"] == "finished" and listed["second"]["users_acked"] == 30
    assert listed["second"]["campaign"] == sent.campaign != planned.campaign
    text = CliRunner().invoke(cli, ["runs", str(runs)]).output
    assert "finished" in text and "planned" in text and sent.campaign[:12] in text
    missing = CliRunner().invoke(cli, ["runs", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_resume_refuses_an_input_replaced_before_it_was_loaded(tmp_path: Path) -> None:
    audience = _audience(tmp_path / "a.csv", 50)
    run = bulkbatch.plan(audience, event="welcome", run_dir=tmp_path / "r")
    # simulate a crash during load: the run exists, its rows were never stored
    state = RunState.load(run.path)
    state.stages.clear()
    state.save()
    (run.path / "run.duckdb").unlink()
    _audience(audience, 1000)  # the export was replaced in the meantime
    with pytest.raises(InputError) as e:
        bulkbatch.Run(run.path).resume()
    assert str(e.value).startswith(f"Input {audience.resolve()} changed (size or modification")


def test_a_planned_runs_missing_files_say_how_to_send_it(tmp_path: Path) -> None:
    """They said "Run 'bulkbatch resume DIR'", which for a run 'bulkbatch plan' started
    only plans again."""
    planned = bulkbatch.plan(_audience(tmp_path / "a.csv", 5), event="w", run_dir=tmp_path / "r")
    for read in (planned.summary, planned.read_results):
        with pytest.raises(StateError) as e:
            read()
        assert "bulkbatch resume" not in str(e.value)
        assert "send it with 'bulkbatch send' and the same input and options" in str(e.value)

"""``bench/bench_shared_key.py`` must not rot: every configuration on a tiny audience.

2 shards, 4k people, an emulator limit of 200 req/s: only the shape of the report and the
exactly-once check are asserted (behaviour, not timing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_shared_key import CONFIG_NAMES, main

pytestmark = pytest.mark.e2e

LABELS = (
    "1 process, --rate L",
    "(a) N shards, no --rate",
    "(b) N shards, --rate L/N",
    "(c) N shards, --rate L",
)


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in LABELS:
            rows[cells[0]] = cells
    return rows


@pytest.mark.timeout(240)
def test_every_configuration_sends_everyone_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--people", "4000", "--shards", "2", "--limit", "200", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == set(LABELS), out
    procs = {cells[0]: cells[1] for cells in rows.values()}
    assert procs == {
        LABELS[0]: "1 × 200",
        LABELS[1]: "2 × adaptive",
        LABELS[2]: "2 × 100",
        LABELS[3]: "2 × 200",
    }
    for cells in rows.values():
        assert len(cells) == 15, cells
        assert cells[13] == "yes", cells  # once

    (report,) = tmp_path.glob("shared_key-*.json")
    data = json.loads(report.read_text())
    assert [r["config"] for r in data["results"]] == list(CONFIG_NAMES)
    assert "load average" in data["uptime_before"]
    for r in data["results"]:
        assert r["exactly_once"] and r["all_ok"], r["config"]
        assert r["max_accepted_per_recipient"] == 1
        assert r["users_accepted"] == r["ingested_sum"] > 0
        assert len(r["shards"]) == r["processes"]
        assert all(s["exit_code"] == 0 for s in r["shards"])
        assert r["emulator_requests"] >= r["client_requests"] > 0
        assert r["emulator_429"] == r["client_throttled"]


def test_bad_configs_are_refused_with_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--configs", "adaptive,everything"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--configs 'adaptive,everything'" in err and "baseline" in err

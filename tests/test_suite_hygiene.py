"""The suite cleans up after itself: a session leaves nothing of its own in the temp directory.

Every pytest process (each xdist worker too) makes a private ``BULKBATCH_DATA_DIR`` and a
contract log when ``tests/conftest.py`` is imported; both go at the end of its session. Before
this test, the data directories stayed behind, one per process and run (159 of them in
``/tmp`` after a few days of ``make test``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_session_removes_its_data_dir_and_contract_log(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("BULKBATCH_DATA_DIR", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--basetemp",
            str(tmp_path / "basetemp"),
            "tests/test_layout.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in temp.iterdir()) == []

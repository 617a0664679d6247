"""The demo cell: ``bulkbatch --quiet demo`` (2,000 people, end to end), timed.

Issue #19's last goal is that small runs feel instant: the demo in ≤ 5 s, excluding the
install. Until round 31 that was timed by hand with ``time``; the bench now measures it in
the same run as the other goals (``make bench``, ``make bench-quick`` and
``make bench-goals``: three runs, the median judged), so the Targets table judges every #19
goal from one run.

Each run is a fresh subprocess with its own run and data directories (the demo starts its
emulator in-process, so there is no emulator to start here). Wall time covers the whole
process: interpreter start, imports, the emulator, load to results.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from typing import Any


def measure(command: list[str], reps: int, timeout: float | None) -> dict[str, Any]:
    """``{"walls": [seconds, ...], "error": None | str}`` for ``reps`` runs of ``command
    --quiet demo``; the first failure stops the cell and is kept as its error."""
    walls: list[float] = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bb-bench-demo-") as tmp:
            env = {**os.environ, "BULKBATCH_DATA_DIR": os.path.join(tmp, "data")}
            run_dir = os.path.join(tmp, "run")
            started = time.perf_counter()
            try:
                proc = subprocess.run(
                    [*command, "--quiet", "demo", "--run-dir", run_dir],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return {"walls": walls, "error": f"timed out after {timeout:g} s"}
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                return {"walls": walls, "error": f"exit {proc.returncode}: {last}"}
            if not os.path.exists(os.path.join(run_dir, "results.parquet")):
                return {"walls": walls, "error": "exit 0 but no results.parquet"}
            walls.append(wall)
    return {"walls": walls, "error": None}

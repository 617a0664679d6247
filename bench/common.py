"""Shared helpers of the end-to-end benchmark (``bench/run.py``).

* :func:`audience` / :func:`prefix_audience` — synthetic audiences in ``bench/data/``
  (gitignored), generated once with :func:`bulkbatch.synth.generate` (2 % duplicates, seed 0;
  the same files ``bench/bench_plan.py`` uses).
* :class:`Emulator` — :class:`bulkbatch.testing.EmulatorProcess` (the one emulator-process
  wrapper, shared with the tests), with its CPU seconds read from psutil.
* :func:`measure` — run one program as a subprocess; wall time and peak RSS of the whole
  process tree, polled with psutil every 50 ms.
* :func:`machine` — cores, memory, CPU model and library versions for the RESULTS header.
* :func:`host_speed` — how fast this host is right now, on three fixed single-thread tasks.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Self

import httpx
import psutil

from bulkbatch.testing.process import EmulatorProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
POLL_S = 0.05


def audience(rows: int, *, duplicate_rate: float = 0.02) -> Path:
    """The synthetic audience of ``rows`` rows (Parquet), generated on first use."""
    from bulkbatch.synth import generate

    suffix = "" if duplicate_rate == 0.02 else f"_dup{duplicate_rate:g}"
    path = DATA / f"audience_{rows}{suffix}.parquet"
    if not path.exists():
        t = time.perf_counter()
        tmp = path.with_suffix(".tmp.parquet")
        generate(tmp, rows, duplicate_rate=duplicate_rate, seed=0)
        tmp.replace(path)
        log(f"generated {path.name} in {time.perf_counter() - t:.1f}s")
    return path


def prefix_audience(path: Path, rows: int) -> Path:
    """The first ``rows`` rows of ``path`` as their own Parquet file (for extrapolation)."""
    import duckdb

    out = path.with_name(f"{path.stem}_head{rows}.parquet")
    if not out.exists():
        tmp = out.with_suffix(".tmp.parquet")
        con = duckdb.connect()
        con.execute("SET preserve_insertion_order = true")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{path}') LIMIT {int(rows)}) "
            f"TO '{tmp}' (FORMAT parquet)"
        )
        con.close()
        tmp.replace(out)
    return out


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total


class Emulator(EmulatorProcess):
    """A fresh emulator process (no key); ``cpu_seconds()`` is its user+system CPU so far.

    The one emulator-process wrapper (:class:`bulkbatch.testing.EmulatorProcess`), plus the
    psutil handle the measurements read.
    """

    def __init__(self, *, faults: str | None = None, progression: str = "immediate") -> None:
        args = ["--progression", progression, *(["--faults", faults] if faults else [])]
        super().__init__(*args, api_key=None, capture_stderr=False)
        self.ps: psutil.Process | None = None

    def start(self) -> Self:
        super().start()
        assert self.proc is not None
        self.ps = psutil.Process(self.proc.pid)
        return self

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mib(self) -> float:
        assert self.ps is not None
        return float(self.ps.memory_info().rss) / 2**20

    def stats(self) -> dict[str, object]:  # type: ignore[override]  # {} when unreachable
        try:
            return dict(super().stats())
        except (httpx.HTTPError, ValueError):
            return {}


@dataclass
class Measurement:
    """One program run: wall time, peak RSS of its process tree, its output."""

    wall_s: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    emulator_cpu_s: float = 0.0
    emulator_stats: dict[str, object] = field(default_factory=dict)

    @property
    def emulator_share(self) -> float:
        return self.emulator_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def _wait(
    proc: subprocess.Popen[bytes], ps: psutil.Process, started: float, timeout: float | None
) -> tuple[int, float]:
    """Poll until ``proc`` exits: (peak tree RSS in bytes, CPU seconds from wait4)."""
    peak = 0
    while True:
        # wait4 instead of poll(): the exit also yields the CPU time of the program
        # (and of the children it waited for), which host contention does not inflate.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return peak, usage.ru_utime + usage.ru_stime
        peak = max(peak, _tree_rss(ps))
        if timeout is not None and time.perf_counter() - started > timeout:
            proc.kill()
        time.sleep(POLL_S)


def measure(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    emulator: Emulator | None = None,
    timeout: float | None = None,
) -> Measurement:
    """Run ``cmd``; poll the RSS of it and all its children every 50 ms."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        cpu0 = emulator.cpu_seconds() if emulator else 0.0
        load0 = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=full_env, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        peak = 0
        cpu = 0.0
        try:
            peak, cpu = _wait(proc, ps, started, timeout)
        finally:
            if proc.returncode is None:  # interrupted: never leave the program behind
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - started
        cpu1 = emulator.cpu_seconds() if emulator else 0.0
        out.seek(0)
        err.seek(0)
        return Measurement(
            wall_s=wall,
            peak_rss_mib=peak / 2**20,
            returncode=proc.returncode,
            cpu_s=cpu,
            load_before=load0,
            load_after=os.getloadavg()[0],
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            emulator_cpu_s=cpu1 - cpu0,
            emulator_stats=emulator.stats() if emulator else {},
        )


def _meminfo_gib() -> float:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return psutil.virtual_memory().total / 2**30


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    return {
        "cores": str(os.cpu_count()),
        "memory": f"{_meminfo_gib():.1f} GiB",
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "duckdb": _version("duckdb"),
        "httpx": _version("httpx"),
        "pyarrow": _version("pyarrow"),
        "trycourier": _version("trycourier"),
        "bulkbatch": _version("bulkbatch"),
    }


SPEED_TASKS = {
    "python": "a pure-Python loop of 3,000,000 steps",
    "duckdb": "a DuckDB aggregate over 2,000,000 rows with md5 (one thread)",
    "fresh memory": "256 MiB written into a new file, once (the page cache takes new memory)",
}
FRESH_MIB = 256


def host_speed(repeats: int = 3) -> dict[str, float]:
    """Milliseconds each of :data:`SPEED_TASKS` takes now, the best of ``repeats``.

    The same 2-core VM has run the same program up to 1.5 times slower from one hour to the
    next (rounds 21-25 of #19: a 1M send took 21.8 CPU-s at one hour and 32.4 at another),
    with no steal time in ``/proc/stat``: CPU seconds inflate too, so they cannot tell a
    slow hour from a slow change. These two tasks never change, so their times, taken before
    and after a run's measurements, say how fast the host was while it measured. The plan's
    kind of work (DuckDB, md5) and the client's (the interpreter) are timed apart, since
    they need not slow together.

    *fresh memory* is timed once, not the best of ``repeats`` (the repeats would reuse the
    memory the first one freed). This VM's balloon takes back guest memory that stays free
    (virtio-balloon free page reporting), and the first touch of such memory costs the
    kernel 4-9 s per GiB, against 0.26 s for memory freed seconds before (round 32 of #19:
    1,000 MiB written with ``pwrite``). Every stage that writes (the run database, spills,
    scratch tables, Parquet files) pays that as system CPU, by an amount that depends on
    what ran before it.
    """
    import duckdb

    def python_loop() -> None:
        total = 0
        for i in range(3_000_000):
            total += i * i % 7

    con = duckdb.connect()
    con.execute("SET threads = 1")

    def duckdb_aggregate() -> None:
        con.execute(
            "SELECT count(DISTINCT (i * 2654435761) % 1000003), sum(length(md5(i::VARCHAR))) "
            "FROM range(2000000) t(i)"
        ).fetchall()

    out = {}
    try:
        for name, task in (("python", python_loop), ("duckdb", duckdb_aggregate)):
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                task()
                best = min(best, time.perf_counter() - started)
            out[name] = round(best * 1000, 1)
    finally:
        con.close()
    out["fresh memory"] = round(_fresh_write(FRESH_MIB) * 1000, 1)
    return out


def _fresh_write(mib: int) -> float:
    """Seconds to write ``mib`` MiB into a new temporary file, a MiB per ``pwrite``."""
    block = os.urandom(2**20)
    with tempfile.TemporaryDirectory(prefix="bb-speed-") as tmp:
        fd = os.open(Path(tmp) / "fresh.bin", os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            started = time.perf_counter()
            for i in range(mib):
                os.pwrite(fd, block, i * 2**20)
            return time.perf_counter() - started
        finally:
            os.close(fd)


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

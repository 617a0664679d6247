"""The "no traceback" sweep: every command of the real CLI, over bad inputs, every misbehaving
server mode, corrupted run directories and bad option values, ends in bounded time with one
clear line: exit 0, 1 or 2, the last stderr line starting with ``Error:`` (or the documented
stop line), no ``Traceback``, no "please report", a few lines at most.

Each case runs the CLI in child processes (:func:`tests.support.bulkbatch`). The cases are
independent, so the sweep runs them side by side (a few at a time) in a module fixture, and
each parametrized test checks its own case's commands; only the selected cases run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bulkbatch.testing import serve
from tests.stages import test_bad_inputs as corpus
from tests.support import bulkbatch

PER_COMMAND = 25.0
"""Seconds any one command may take before the sweep calls it a hang."""
STOP_AFTER = 3.0
"""Seconds after which a command that is still retrying is stopped with SIGTERM."""
MAX_LINES = 6
"""stderr lines a failure may print (click's usage errors print 4: usage, hint, blank, error)."""
WORKERS = 4
AUDIENCE = "user_id,email\n" + "".join(f"u{n},u{n}@example.com\n" for n in range(5))
STOP_LINE = "Stopped by SIGTERM. Every acknowledged batch is recorded."


@dataclass
class Ran:
    """One command of a case and how it ended."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float
    codes: tuple[int, ...]
    """The exit codes this command may legitimately end with."""
    stopped: bool = False
    """It was stopped with SIGTERM after :data:`STOP_AFTER` (still retrying)."""


class Box:
    """What a case may use: its own directory, a clean environment, the golden run."""

    def __init__(self, root: Path, golden: Path) -> None:
        self.root = root
        self.golden = golden
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_")}
        self.env["BULKBATCH_DATA_DIR"] = str(root / "data")
        self.env.pop("BULKBATCH_EMULATOR_API_KEY", None)
        self.ran: list[Ran] = []
        self.audience = root / "audience.csv"
        self.audience.write_text(AUDIENCE)

    def cli(
        self, *args: str, codes: tuple[int, ...] = (1, 2), env: dict[str, str] | None = None
    ) -> Ran:
        began = time.monotonic()
        try:
            done = bulkbatch(*args, env=env or self.env, cwd=self.root, timeout=PER_COMMAND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bulkbatch {' '.join(args)} hung for {PER_COMMAND} s")
        ran = Ran(args, done.returncode, done.stdout, done.stderr, time.monotonic() - began, codes)
        self.ran.append(ran)
        return ran

    def cli_stopped(self, *args: str, env: dict[str, str]) -> Ran:
        """Run ``args``; when still running after STOP_AFTER, stop it as a scheduler would."""
        began = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkbatch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.root,
        )
        stopped = False
        try:
            out, err = proc.communicate(timeout=STOP_AFTER)
        except subprocess.TimeoutExpired:
            stopped = True
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=PER_COMMAND)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"bulkbatch {' '.join(args)} did not stop on SIGTERM")
        ran = Ran(args, proc.returncode, out, err, time.monotonic() - began, (1,), stopped)
        self.ran.append(ran)
        return ran

    def copy_golden(self, name: str) -> Path:
        target = self.root / "runs" / name
        shutil.copytree(self.golden, target)
        return target


CASES: dict[str, Callable[[Box], None]] = {}


def case(name: str) -> Callable[[Callable[[Box], None]], Callable[[Box], None]]:
    def register(fn: Callable[[Box], None]) -> Callable[[Box], None]:
        CASES[name] = fn
        return fn

    return register


# -- (a) the bad-input corpus -----------------------------------------------------------


def _corpus_case(name: str) -> Callable[[Box], None]:
    build, expected, *_ = corpus.CASES[name]

    def run(box: Box) -> None:
        source = str(build())
        if expected[0] == "error":  # it fails before anything is sent: send says the same
            box.cli("send", source, "--event", "welcome", "--emulator", "--run-dir", "send")
        else:
            box.cli("plan", source, "--event", "welcome", "--run-dir", "plan", codes=(0,))

    return run


for _name in corpus.CASES:
    CASES[f"input-{_name}"] = _corpus_case(_name)


# -- (b) every misbehaving-server mode ----------------------------------------------------

_TERMINAL_AFTER_JOB = ("endless-cursor", "repeat-cursor", "repeat-items", "wrong-types")
_RETRYING = ("huge-retry", "hang")


def _server_case(mode: str) -> Callable[[Box], None]:
    def run(box: Box) -> None:
        with serve(mode, received=5) as server:
            env = {**box.env, "COURIER_BASE_URL": server.url, "COURIER_API_KEY": "sk_test_sweep"}
            send: tuple[str, ...] = (
                "send",
                str(box.audience),
                "--event",
                "welcome",
                "--run-dir",
                "r",
            )
            send += ("--timeout", "2", "--http-timeout", "1", "--poll-interval", "0.2")
            if mode in _RETRYING:
                box.cli_stopped(*send, env=env)
                return
            box.cli(*send, env=env, codes=(0,) if mode == "ok" else (1,))
            if mode == "ok" or mode in _TERMINAL_AFTER_JOB or mode == "never-completes":
                follow = (0,) if mode == "ok" else (1,)
                box.cli("resume", "r", "--timeout", "2", env=env, codes=follow)
                box.cli("status", "r", "--refresh", env=env, codes=(0, 1))
                box.cli("cancel", "r", env=env, codes=(0, 1))
            else:
                box.cli("resume", "r", env=env, codes=(1,))

    return run


for _mode in (
    "ok",
    "endless-cursor",
    "repeat-cursor",
    "repeat-items",
    "wrong-types",
    "non-json",
    "huge-retry",
    "never-completes",
    "redirect",
    "hang",
):
    CASES[f"server-{_mode}"] = _server_case(_mode)


# -- (c) corrupted run directories ------------------------------------------------------


def _edit_state(run: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = run / "state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


CORRUPTIONS: dict[str, Callable[[Path], object]] = {
    "state-not-an-object": lambda run: (run / "state.json").write_text("[1, 2]"),
    "state-jobs-wrong-shape": lambda run: _edit_state(run, lambda s: s.update(jobs="x")),
    "state-spec-wrong-shape": lambda run: _edit_state(run, lambda s: s.update(spec={"x": 1})),
    "state-unknown-version": lambda run: _edit_state(run, lambda s: s.update(version=99)),
    "state-truncated": lambda run: _truncate(run / "state.json", 0.5),
    "state-empty": lambda run: (run / "state.json").write_bytes(b""),
    "db-missing": lambda run: (run / "run.duckdb").unlink(),
    "db-truncated": lambda run: _truncate(run / "run.duckdb", 0.4),
}


def _corrupt_case(name: str) -> Callable[[Box], None]:
    def run(box: Box) -> None:
        target = box.copy_golden("broken")
        CORRUPTIONS[name](target)
        commands: list[tuple[str, ...]] = [("status", "--refresh"), ("resume",), ("report",)]
        if name.startswith("db-"):  # state.json is read the same way by every command
            commands += [("results",), ("cancel",)]
        for command in commands:
            box.cli(command[0], str(target), *command[1:], codes=(0, 1))

    return run


for _name in CORRUPTIONS:
    CASES[f"rundir-{_name}"] = _corrupt_case(_name)


@case("rundir-runs-lists-the-broken")
def _runs_broken(box: Box) -> None:
    for name, corrupt in CORRUPTIONS.items():
        corrupt(box.copy_golden(name))
    box.cli("runs", str(box.root / "runs"), codes=(0,))
    box.cli("runs", str(box.root / "runs"), "--json", codes=(0,))


@case("rundir-cancel-twice")
def _cancel_twice(box: Box) -> None:
    # 'bulkbatch cancel' is documented as safe to repeat.
    target = box.copy_golden("twice")
    box.cli("cancel", str(target), codes=(0,))
    box.cli("cancel", str(target), codes=(0,))


# -- (d) bad option values --------------------------------------------------------------

BAD_OPTIONS: dict[str, tuple[str, ...]] = {
    "rate-overflow": ("--rate", "1e309"),
    "poll-interval-nan": ("--poll-interval", "nan"),
    "content-not-json": ("--content", "notjson"),
    "batch-size-0": ("--batch-size", "0"),
    "max-attempts-0": ("--max-attempts", "0"),
    "max-backoff-nan": ("--max-backoff", "nan"),
    "where-injection": ("--where", "true); COPY (SELECT 1) TO 'x.csv'; SELECT (true"),
    "sql-not-a-query": ("--sql", "DROP TABLE inputs"),
    "timeout-inf": ("--timeout", "inf"),
    "data-missing-file": ("--data", "@nothere.json"),
}


def _option_case(flags: tuple[str, ...]) -> Callable[[Box], None]:
    def run(box: Box) -> None:
        args = ("send", str(box.audience), "--event", "welcome", "--emulator", "--run-dir", "r")
        box.cli(*args, *flags, codes=(2,))
        assert not (box.root / "x.csv").exists(), "--where ran a second statement"
        if flags[0] not in ("--where", "--sql"):  # those two are checked against the columns
            assert not (box.root / "r").exists(), "a run directory was made for bad usage"

    return run


for _name, _flags in BAD_OPTIONS.items():
    CASES[f"option-{_name}"] = _option_case(_flags)


@case("option-where-fixed-then-rerun")
def _where_fixed(box: Box) -> None:
    # The usual next step after "Bad --where": fix it and run the same command again.
    args = ("send", str(box.audience), "--event", "welcome", "--emulator", "--run-dir", "r")
    box.cli(*args, "--where", "nosuch = 1", codes=(2,))
    box.cli(*args, "--where", "email IS NOT NULL", codes=(0,))


@case("option-results-out-csv")
def _results_csv(box: Box) -> None:
    box.cli("results", str(box.copy_golden("g")), "--out", "x.csv", codes=(2,))


@case("option-resume-rate-nan")
def _resume_rate(box: Box) -> None:
    box.cli("resume", str(box.copy_golden("g")), "--rate", "nan", codes=(2,))


@case("option-status-not-a-run")
def _status_missing(box: Box) -> None:
    box.cli("status", "nothing-here", "--refresh", codes=(1, 2))
    box.cli("runs", "nothing-here", codes=(0, 1, 2))


# -- the sweep --------------------------------------------------------------------------

XFAIL: dict[str, str] = {}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(reason=XFAIL[name], strict=True))
        if name in XFAIL
        else name
        for name in sorted(CASES)
    ]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 5-person run on the in-process emulator, copied by the run-directory cases."""
    root = tmp_path_factory.mktemp("golden")
    box = Box(root, root / "golden")
    ran = box.cli(
        "send",
        str(box.audience),
        "--event",
        "welcome",
        "--emulator",
        "--run-dir",
        "golden",
        codes=(0,),
    )
    assert ran.code == 0, ran.stderr
    return root / "golden"


@pytest.fixture(scope="module")
def sweep(
    request: pytest.FixtureRequest, golden: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Ran] | BaseException]:
    """Run the selected cases side by side; each case's commands run in order."""
    selected = sorted(
        {
            str(item.callspec.params["name"])
            for item in request.session.items
            if isinstance(item, pytest.Function)
            and item.module is request.module
            and hasattr(item, "callspec")
        }
    )
    bad = corpus.BAD
    corpus.BAD = tmp_path_factory.mktemp("bad")  # the corpus builders write here, not tests/data

    def one(name: str) -> list[Ran] | BaseException:
        box = Box(tmp_path_factory.mktemp(name), golden)
        try:
            CASES[name](box)
        except BaseException as exc:  # noqa: BLE001 - reported by the case's own test
            return exc
        return box.ran

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            return dict(zip(selected, pool.map(one, selected), strict=True))
    finally:
        corpus.BAD = bad


def check(ran: Ran) -> None:
    command = "bulkbatch " + " ".join(ran.args)
    lines = ran.stderr.strip().splitlines()
    where = f"{command} (exit {ran.code}):\n{ran.stderr[-3000:]}"
    assert "Traceback" not in ran.stderr + ran.stdout, where
    assert "please report" not in (ran.stderr + ran.stdout).lower(), where
    assert ran.code in ran.codes, where
    if ran.stopped:
        assert lines and lines[-1].startswith(STOP_LINE), where
        return
    if ran.code == 0:
        return
    assert lines and lines[-1].startswith("Error: "), where
    problem = [line for line in lines if not line.startswith("[")]  # progress lines aside
    assert len(problem) <= MAX_LINES, where
    assert ran.seconds < PER_COMMAND, where


@pytest.mark.e2e
@pytest.mark.parametrize("name", _params())
def test_no_traceback(name: str, sweep: dict[str, list[Ran] | BaseException]) -> None:
    outcome = sweep[name]
    if isinstance(outcome, BaseException):
        raise outcome
    assert outcome, "the case ran no command"
    for ran in outcome:
        check(ran)


def test_every_server_mode_is_swept() -> None:
    from bulkbatch.testing.misbehaving import MODES

    assert {f"server-{mode}" for mode in MODES} <= set(CASES)

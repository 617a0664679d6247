"""``bulkbatch.cli.exits``: a stop exits 1 wherever it lands, as the exit-code table says.

Each case runs the CLI's own entry point in a fresh interpreter (the signal must not reach
pytest) as ``python -m``, the way the tests run it (the console script exits through
another path, which the CPython note below does not reach), with a command that stops itself
at a chosen point.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STOPPER = textwrap.dedent(
    """
    import os, signal, sys
    import click
    from bulkbatch.cli import cli, main
    from bulkbatch.cli.exits import handle_errors

    @cli.command("stop-me")
    @click.pass_context
    @handle_errors
    def stop_me(ctx):
        {body}

    signal.signal(signal.SIGINT, {sigint})  # as inherited at startup
    sys.argv = ["bulkbatch", "stop-me"]
    main()
    """
)

BODIES = {
    # A SIGTERM while a module is being imported lands inside exec() of a string when the
    # module builds a dataclass (the lazy 'import bulkbatch.pipeline' of every run command).
    # CPython 3.11 then remembers an "unhandled" KeyboardInterrupt even though the CLI
    # handled it, and 'python -m bulkbatch' killed itself with SIGINT (exit -2) after
    # printing its stop line: 5 of 56 SIGTERMs 0.6-1.0 s into 'bulkbatch send'.
    "inside exec": 'exec("import os, signal, time\\nos.kill(os.getpid(), signal.SIGTERM)\\ntime.sleep(5)")',
    "in plain code": "os.kill(os.getpid(), signal.SIGTERM); signal.pause()",
}


SIGINT = {
    "as in a terminal": "signal.default_int_handler",
    # A background job of a shell script starts with SIGINT ignored. The CLI used to turn
    # SIGTERM into SIGINT, which that swallowed: the command went on as if never stopped.
    "ignored": "signal.SIG_IGN",
}


@pytest.mark.parametrize("sigint", list(SIGINT))
@pytest.mark.parametrize("where", list(BODIES))
def test_a_stop_exits_1_with_its_line(where: str, sigint: str, tmp_path: Path) -> None:
    script = STOPPER.replace("{body}", BODIES[where]).replace("{sigint}", SIGINT[sigint])
    (tmp_path / "stopper.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "-m", "stopper"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip() == "Stopped by SIGTERM. Every acknowledged batch is recorded."


def test_saying_which_signals_stop_a_run_imports_no_event_loop() -> None:
    # The CLI does it before parsing any command: asyncio and anyio would add ~80 ms to every
    # command, --help included (bulkbatch.stopping is a leaf for that reason).
    script = (
        "import sys, bulkbatch.cli\n"
        "bulkbatch.cli.exits.install_signal_handlers()\n"
        "print(sorted(m for m in ('asyncio', 'anyio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "[]", done.stderr

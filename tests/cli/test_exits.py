"""``bulkbatch.cli.exits``: a stop exits 1 wherever it lands, as the exit-code table says.

Each case runs the CLI's own entry point in a fresh interpreter (the signal must not reach
pytest) as ``python -m``, the way the tests and ``make demo`` run it, with a command that
stops itself at a chosen point.
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


@pytest.mark.parametrize("where", list(BODIES))
def test_a_stop_exits_1_with_its_line(where: str, tmp_path: Path) -> None:
    (tmp_path / "stopper.py").write_text(STOPPER.replace("{body}", BODIES[where]))
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

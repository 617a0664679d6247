"""``run_sync``: Ctrl-C (and SIGTERM and SIGHUP, which the CLI adds with
``bulkbatch.stopping.stop_on``) stops a run as an anyio cancellation, so the shields that
guard DuckDB work hold.

asyncio's own Ctrl-C path cancels the main task natively, which cancels whatever future the
task awaits, shield or not: a worker thread still using the run database went on while the
pipeline closed its connection, and DuckDB refused with ``ResourceInUseException`` (seen in
the no-traceback sweep, one SIGTERM in six right after the plan). Each case runs in a fresh
interpreter, so the signal never reaches pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    import anyio, duckdb
    from bulkbatch._sync import run_sync

    events = []

    async def main():
        con = duckdb.connect()
        try:
            def work():
                os.kill(os.getpid(), signal.SIGINT)  # the stop arrives while DuckDB works
                time.sleep(0.3)
                events.append(str(con.execute("SELECT 42").fetchall()[0][0]))
            await anyio.to_thread.run_sync(work)
            await anyio.sleep(5)
            events.append("not stopped")
        finally:
            con.close()
            events.append("closed")

    try:
        run_sync(main)
    except KeyboardInterrupt:
        events.append("KeyboardInterrupt")
    print(events)
    """
)


# Ctrl-C as in a terminal, whatever the test runner's own children inherit (a background
# job of a shell script starts with SIGINT ignored: test_an_ignored_ctrl_c_stays_ignored).
TERMINAL = "import signal as _s\n_s.signal(_s.SIGINT, _s.default_int_handler)\n"


def _run(script: str, *, prelude: str = TERMINAL) -> str:
    done = subprocess.run(
        [sys.executable, "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_ctrl_c_waits_for_the_thread_before_the_connection_closes() -> None:
    assert _run(SCRIPT) == "['42', 'closed', 'KeyboardInterrupt']"


def test_a_finished_run_returns_its_result() -> None:
    script = "from bulkbatch._sync import run_sync\nasync def f(x):\n    return x + 1\n"
    assert _run(script + "print(run_sync(f, 41))") == "42"


@pytest.mark.parametrize("where", ["thread", "loop"])
def test_run_sync_outside_the_main_thread_keeps_working(where: str) -> None:
    # Signal handlers can only be set from the main thread: elsewhere run_sync runs as before.
    script = textwrap.dedent(
        """
        import threading
        from bulkbatch._sync import run_sync
        async def f():
            return 7
        out = []
        t = threading.Thread(target=lambda: out.append(run_sync(f)))
        t.start(); t.join()
        print(out[0])
        """
    )
    if where == "loop":
        script = textwrap.dedent(
            """
            import asyncio
            from bulkbatch._sync import run_sync
            async def f():
                return 7
            async def inside():
                return run_sync(f)  # a running loop (Jupyter): a portal thread runs it
            print(asyncio.run(inside()))
            """
        )
    assert _run(script) == "7"


def test_an_error_comes_out_as_itself() -> None:
    script = textwrap.dedent(
        """
        from bulkbatch._sync import run_sync
        async def f():
            raise ValueError("bad value")
        try:
            run_sync(f)
        except ValueError as exc:
            print("ValueError", exc)
        """
    )
    assert _run(script) == "ValueError bad value"


HOST_RAISES = SCRIPT.replace(
    "events = []",
    """events = []

class Interrupted(Exception):
    pass

def host(signum, frame):  # Dagster's step processes: raise at once, inside the running code
    events.append(f"host saw {signal.Signals(signum).name}")
    raise Interrupted("the host's own")

signal.signal(signal.SIGINT, host)""",
).replace(
    'except KeyboardInterrupt:\n    events.append("KeyboardInterrupt")',
    'except Interrupted as exc:\n    events.append(f"Interrupted({exc})")\n'
    "events.append(signal.getsignal(signal.SIGINT) is host)",
)


def test_a_host_s_raising_handler_gets_its_exception_out_after_the_run_unwound() -> None:
    # Raised where the signal landed, inside the event loop, the host's exception cut
    # through anyio's shields like asyncio's own Ctrl-C did (ResourceInUseException under
    # Dagster). Its handler is now called from the run's loop: what it raises comes out of
    # run_sync once DuckDB was waited for and the connection closed, and it is set back.
    assert _run(HOST_RAISES, prelude="") == (
        "['host saw SIGINT', '42', 'closed', \"Interrupted(the host's own)\", True]"
    )


def test_a_host_s_alarm_raising_its_timeout_gets_it_out_after_the_run_unwound() -> None:
    # Airflow's execution_timeout: a SIGALRM handler that raises AirflowTaskTimeout.
    script = HOST_RAISES.replace("signal.SIGINT", "signal.SIGALRM").replace(
        "os.kill(os.getpid(), signal.SIGALRM)", "signal.setitimer(signal.ITIMER_REAL, 0.05)"
    )
    assert _run(script, prelude="") == (
        "['host saw SIGALRM', '42', 'closed', \"Interrupted(the host's own)\", True]"
    )


def test_a_host_s_handler_that_returns_lets_the_run_go_on() -> None:
    # Dagster outside an op only records an interrupt: the run is not stopped by it.
    script = textwrap.dedent(
        """
        import os, signal
        import anyio
        from bulkbatch._sync import run_sync
        seen = []
        def host(signum, frame):
            seen.append(signum)
        signal.signal(signal.SIGINT, host)
        async def f():
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep(0.2)
            return "finished"
        print(run_sync(f), seen == [signal.SIGINT], signal.getsignal(signal.SIGINT) is host)
        """
    )
    assert _run(script, prelude="") == "finished True True"


def test_the_default_handler_is_back_after_a_run() -> None:
    script = textwrap.dedent(
        """
        import signal
        from bulkbatch._sync import run_sync
        async def f():
            return signal.getsignal(signal.SIGINT) is signal.default_int_handler
        during = run_sync(f)
        print(during, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        """
    )
    assert _run(script) == "False True"


STOP_ON_SIGTERM = textwrap.dedent(
    """
    import os, signal, time
    import anyio
    from bulkbatch._sync import run_sync
    from bulkbatch.stopping import stop_on

    def own(signum, frame):
        raise SystemExit("the caller's own SIGTERM handler ran")

    signal.signal(signal.SIGTERM, own)
    stop_on(signal.SIGTERM)
    events = []

    async def main():
        def work():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            events.append("thread done")
        try:
            await anyio.to_thread.run_sync(work)
            await anyio.sleep(5)
            events.append("not stopped")
        finally:
            events.append("unwound")

    try:
        run_sync(main)
    except KeyboardInterrupt as exc:
        events.append(f"KeyboardInterrupt{exc.args}")
    print(events, signal.getsignal(signal.SIGTERM) is own)
    """
)


def test_a_signal_given_to_stop_on_stops_like_ctrl_c_and_its_handler_comes_back() -> None:
    # The CLI's SIGTERM and SIGHUP: taken as an anyio cancellation while the run goes on,
    # named in the KeyboardInterrupt, and the CLI's own handler set again after the run
    # (asyncio would leave SIG_DFL there).
    assert _run(STOP_ON_SIGTERM) == (
        "['thread done', 'unwound', \"KeyboardInterrupt('SIGTERM',)\"] True"
    )


def test_an_ignored_ctrl_c_stays_ignored_and_stop_on_still_stops() -> None:
    # A background job of a shell script starts with SIGINT ignored. It stays ignored, and
    # SIGTERM, which the CLI used to turn into that ignored SIGINT, still stops the run.
    ignored = "import signal as _s\n_s.signal(_s.SIGINT, _s.SIG_IGN)\n"
    script = STOP_ON_SIGTERM.replace(
        "print(events,", "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, events,"
    )
    assert _run(script, prelude=ignored) == (
        "True ['thread done', 'unwound', \"KeyboardInterrupt('SIGTERM',)\"] True"
    )


# A host's own stop (Airflow's on_kill from its SIGTERM handler): request_stop stops the run
# the same way, shields holding. In the main thread the run takes the host's SIGTERM and calls
# its handler from the loop; a run in a worker thread cannot take signals, so there the
# host's handler runs as a plain signal handler in the main thread, beside the run's loop.
REQUEST_STOP = textwrap.dedent(
    """
    import os, signal, threading, time
    import anyio
    from bulkbatch._sync import run_sync
    from bulkbatch.stopping import request_stop

    def host(signum, frame):  # Airflow's task runner: SIGTERM -> task.on_kill()
        events.append(f"stopping={request_stop('Stopped by the host')}")

    signal.signal(signal.SIGTERM, host)
    events = [f"idle={request_stop('nothing runs')}"]

    async def main():
        def work():
            KICK
            time.sleep(0.3)
            events.append("thread done")
        try:
            await anyio.to_thread.run_sync(work)
            await anyio.sleep(5)
            events.append("not stopped")
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # a shielded cleanup (the ledger's last commit)
            events.append("unwound")

    def go():
        try:
            run_sync(main)
        except KeyboardInterrupt as exc:
            events.append(f"KeyboardInterrupt{exc.args}")

    WHERE
    print(events, signal.getsignal(signal.SIGTERM) is host)
    """
)
STOPPED = (
    "['idle=False', 'stopping=True', 'thread done', 'unwound', "
    "\"KeyboardInterrupt('Stopped by the host',)\"] True"
)


@pytest.mark.parametrize(
    ("kick", "where"),
    [
        ("os.kill(os.getpid(), signal.SIGTERM)", "go()"),
        (
            "os.kill(os.getpid(), signal.SIGTERM)",
            "t = threading.Thread(target=go); t.start(); t.join()",
        ),
        ("host(None, None)", "t = threading.Thread(target=go); t.start(); t.join()"),
    ],
    ids=["run-in-the-main-thread", "run-in-a-worker-thread", "called-from-a-worker-thread"],
)
def test_request_stop_stops_a_run_like_ctrl_c(kick: str, where: str) -> None:
    script = REQUEST_STOP.replace("KICK", kick).replace("WHERE", where)
    assert _run(script) == STOPPED


def test_request_stop_reaches_a_run_inside_a_running_loop() -> None:
    # Jupyter: the run goes on in a portal thread's loop while the notebook's loop waits.
    script = REQUEST_STOP.replace("KICK", "host(None, None)").replace(
        "WHERE", "import asyncio\nasync def nb():\n    go()\nasyncio.run(nb())"
    )
    assert _run(script) == STOPPED

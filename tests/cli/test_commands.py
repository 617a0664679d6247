"""The command line: help that teaches, one Python equivalent per command, exit codes,
one-line errors, the TOML run file, machine-readable output."""

from __future__ import annotations

import re
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

import bulkbatch
import bulkbatch.webhooks
from bulkbatch.cli import cli
from bulkbatch.state import RunState
from tests.support import ROOT, SAMPLE

README = (ROOT / "README.md").read_text(encoding="utf-8")
CTX = click.Context(cli)
COMMANDS = cli.list_commands(CTX)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_the_commands_are_the_documented_ones() -> None:
    assert (
        sorted(
            [
                "cancel",
                "demo",
                "emulator",
                "merge",
                "plan",
                "report",
                "results",
                "resume",
                "runs",
                "send",
                "status",
                "webhooks",
            ]
        )
        == COMMANDS
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example_and_is_in_the_readme(
    runner: CliRunner, name: str
) -> None:
    command = cli.get_command(CTX, name)
    assert command is not None and command.help, f"{name} has no help"
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output, f"{name} --help has no example"
    assert f"`bulkbatch {name}" in README, f"{name} is not in the README's command table"


# Every command is one call into the Python API under the same name.
PYTHON_EQUIVALENT = {
    "cancel": bulkbatch.cancel,
    "runs": bulkbatch.runs,
    "webhooks": bulkbatch.webhooks.export_events,
    "demo": bulkbatch.demo,
    "emulator": bulkbatch.Emulator,
    "merge": bulkbatch.merge,
    "plan": bulkbatch.plan,
    "report": bulkbatch.report,
    "results": bulkbatch.results,
    "resume": bulkbatch.resume,
    "send": bulkbatch.send,
    "status": bulkbatch.status,
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_python_equivalent(name: str) -> None:
    fn = PYTHON_EQUIVALENT[name]
    assert callable(fn)
    if name not in ("emulator", "webhooks"):
        assert getattr(bulkbatch, name) is fn


def test_all_is_sorted_and_complete() -> None:
    assert bulkbatch.__all__ == sorted(bulkbatch.__all__)
    for name in bulkbatch.__all__:
        assert getattr(bulkbatch, name) is not None, name
    assert set(bulkbatch.__all__) <= set(dir(bulkbatch))
    with pytest.raises(AttributeError):
        bulkbatch.no_such_name  # noqa: B018


def test_plan_json_report(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "--quiet",
            "plan",
            str(SAMPLE),
            "--event",
            "welcome",
            "--run-dir",
            str(tmp_path / "p"),
            "--rate",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["rows_read"] == 2000
    assert report["rows_read"] == report["to_send"] + report["duplicates"] + report["rejected"]
    assert report["estimated_seconds"] > 0
    assert (tmp_path / "p" / "plan.parquet").exists()
    assert (tmp_path / "p" / "rejects.parquet").exists()


def test_rejected_rows_are_reported_and_fail_only_on_request(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Exit 0 with 9 rejected rows reported; --fail-on-rejects / --max-reject-rate opt in."""
    args = ["--quiet", "send", str(SAMPLE), "--event", "welcome", "--emulator",
            "--poll-interval", "0.05"]  # fmt: skip
    done = runner.invoke(cli, [*args, "--run-dir", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    assert re.search(r"^  rejected +9 ", done.output, re.MULTILINE)
    strict = runner.invoke(cli, [*args, "--run-dir", str(tmp_path / "b"), "--fail-on-rejects"])
    assert strict.exit_code == 1
    results = (tmp_path / "b" / "results.parquet").resolve()
    assert strict.output.splitlines()[-1] == (
        f"Error: 9 rows were rejected or ended in ERROR (--fail-on-rejects); see {results}."
    )
    rate = [*args, "--run-id", "rate"]
    loose = runner.invoke(
        cli, [*rate, "--run-dir", str(tmp_path / "c"), "--max-reject-rate", "0.01"]
    )
    assert loose.exit_code == 0, loose.output
    tight = runner.invoke(
        cli, [*rate, "--run-dir", str(tmp_path / "d"), "--max-reject-rate", "0.001"]
    )
    assert tight.exit_code == 1
    assert "9 of 2,000 rows (0." in tight.output
    assert "were rejected or ended in ERROR, over --max-reject-rate 0.001" in tight.output


def test_errors_are_one_line_with_the_fix(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["plan", str(tmp_path / "nope.csv"), "--event", "welcome"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: Input not found: {tmp_path / 'nope.csv'}. Check the path, or quote a glob so "
        "the shell does not expand it.\n"
    )
    no_event = runner.invoke(cli, ["plan", str(SAMPLE)])
    assert no_event.exit_code == 2
    assert no_event.output.strip().startswith("Error: No message to send: pass --event EVENT")
    resume = runner.invoke(cli, ["resume", str(tmp_path / "missing")])
    assert resume.exit_code == 1
    assert "Run directory not found" in resume.output
    assert "Traceback" not in result.output + no_event.output + resume.output


def test_config_file(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "audience.csv").write_bytes(SAMPLE.read_bytes())
    config = tmp_path / "campaign.toml"
    config.write_text(
        'inputs = ["audience.csv"]\n'
        'event = "welcome"\n'
        'run-dir = "runs/nightly"\n'
        "emulator = true\n"
        "poll-interval = 0.05\n"
        '[data]\ncompany = "Acme"\n'
    )
    result = runner.invoke(cli, ["--quiet", "send", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)
    assert summary["run_dir"] == str(tmp_path / "runs" / "nightly")
    assert summary["counts"]["input_rows"] == 2000
    run = bulkbatch.Run(tmp_path / "runs" / "nightly")
    assert run.state.message["data"] == {"company": "Acme"}
    # a flag on the line wins over the file
    over = runner.invoke(
        cli,
        [
            "--quiet",
            "plan",
            "--config",
            str(config),
            "--event",
            "other",
            "--run-dir",
            str(tmp_path / "o"),
            "--json",
        ],
    )
    assert over.exit_code == 2  # 'emulator' is not a plan option: the file is checked per command
    assert "Unknown key 'emulator'" in over.output
    bad = tmp_path / "bad.toml"
    bad.write_text('evnt = "welcome"\n')
    result = runner.invoke(cli, ["send", "--config", str(bad)])
    assert result.exit_code == 2
    assert "Unknown key 'evnt' in" in result.output


def test_log_format_json_progress_lines(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "--log-format",
            "json",
            "send",
            str(SAMPLE),
            "--event",
            "welcome",
            "--emulator",
            "--run-dir",
            str(tmp_path / "r"),
            "--json",
            "--poll-interval",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("{")]
    events = [orjson.loads(ln) for ln in lines]
    assert {"start", "load", "plan", "ingest", "page"} <= {e["stage"] for e in events}
    assert all(isinstance(e["ts"], float) for e in events)
    assert orjson.loads(result.stdout)["accounting_ok"] is True


def test_status_reads_state_without_the_database(runner: CliRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    bulkbatch.plan(SAMPLE, event="welcome", run_dir=run_dir)
    result = runner.invoke(cli, ["status", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    st = orjson.loads(result.output)
    assert st["stage"] == "planned" and st["rows"] == 2000 and st["finished"] is False
    text = runner.invoke(cli, ["status", str(run_dir)]).output
    # It said "next: send", and 'bulkbatch resume' of a plan's run sends nobody.
    assert re.match(r"run r \(.*\): planned; 'bulkbatch send' with the same input and ", text)


def test_status_shows_what_each_finished_stage_took_and_its_cpu(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Whether a slow run waited (on Courier, the network) or worked (this machine)."""
    run_dir = tmp_path / "r"
    bulkbatch.plan(SAMPLE, event="welcome", run_dir=run_dir)
    state = RunState.load(run_dir)
    assert set(state.timings) == set(state.cpu) == {"load", "plan"}
    st = orjson.loads(runner.invoke(cli, ["status", str(run_dir), "--json"]).output)
    assert st["timings"] == state.timings and st["cpu_seconds"] == state.cpu
    text = runner.invoke(cli, ["status", str(run_dir)]).output
    took = ", ".join(
        f"{s} {state.timings[s]:.1f} s (CPU {state.cpu[s]:.1f} s)" for s in ("load", "plan")
    )
    assert f"\n  stages: {took}\n" in text + "\n"


def test_status_of_a_stopped_send_says_what_is_next(runner: CliRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    bulkbatch.plan(SAMPLE, event="welcome", run_dir=run_dir)
    state = RunState.load(run_dir)
    state.plan_only = False  # as 'bulkbatch send' leaves it when it stops before sending
    state.save()
    st = orjson.loads(runner.invoke(cli, ["status", str(run_dir), "--json"]).output)
    assert st["stage"] == "next: send"


def test_version_and_help_are_fast_paths(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["--version"]).exit_code == 0
    out = runner.invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert name in out


def test_plan_help_does_not_promise_that_resume_sends(runner: CliRunner) -> None:
    text = " ".join(runner.invoke(cli, ["plan", "--help"]).output.split())
    assert "'bulkbatch resume RUN_DIR') send this plan" not in text
    assert "the same options given to 'bulkbatch send' send this plan" in text


def test_send_shows_what_the_plan_found_and_plan_shows_it_once(
    runner: CliRunner, tmp_path: Path
) -> None:
    """The plan's warnings and notes were only in 'plan --json': 'send' said nothing of a
    user its e-mail job cannot reach or of a column it does not send, and the 'plan' report
    left the notes out."""
    audience = tmp_path / "people.csv"
    audience.write_text("user_id,email,first_name\nu1,a@x.com,Ann\nu2,,Bob\n", encoding="utf-8")
    common = ["--event", "welcome", "--channel", "email"]
    fast = ["--emulator", "--poll-interval", "0.05"]
    sent = runner.invoke(
        cli, ["send", str(audience), *common, *fast, "--run-dir", str(tmp_path / "s")]
    )
    assert sent.exit_code == 0, sent.output
    notices = [ln for ln in sent.stderr.splitlines() if ln.startswith("[notice]")]
    assert any("1 user(s) to send have no profile.email" in ln for ln in notices), notices
    assert any("input column(s) are not sent: first_name" in ln for ln in notices), notices
    planned = runner.invoke(cli, ["plan", str(audience), *common, "--run-dir", str(tmp_path / "p")])
    assert planned.exit_code == 0, planned.output
    assert planned.output.count("have no profile.email") == 1, planned.output
    assert "  note: 1 input column(s) are not sent: first_name." in planned.stdout


def test_resume_that_finishes_a_plan_shows_its_warnings_once(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A run 'bulkbatch plan' started and that stopped mid-plan: resuming it plans and prints
    the report, which holds the warnings; its progress must not repeat them."""
    audience = tmp_path / "people.csv"
    audience.write_text("user_id,email\nu1,a@x.com\nu2,\n", encoding="utf-8")
    run_dir = tmp_path / "r"
    bulkbatch.plan(str(audience), event="welcome", channel="email", run_dir=run_dir)
    state = RunState.load(run_dir)
    state.stages.pop("plan")  # as a plan stopped before it finished leaves it
    state.save()
    resumed = runner.invoke(cli, ["resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("have no profile.email") == 1, resumed.output

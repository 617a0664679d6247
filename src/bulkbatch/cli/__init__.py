"""The ``bulkbatch`` command line: each command is one call into the Python API.

``flags`` generates every run option's flag from :data:`bulkbatch.options.OPTIONS` (and reads
the TOML run file), ``commands`` holds the commands, ``render`` turns progress events and
results into text, ``exits`` is the exit policy (0 complete, 1 error or stopped — resume
continues, 2 bad usage). Progress and errors go to stderr, results to stdout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from bulkbatch.cli.commands import COMMANDS
from bulkbatch.cli.exits import forget_handled_interrupt, install_signal_handlers

__all__ = ["cli", "main"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LazyGroup(click.Group):
    """A group whose heavier subcommands are imported only when used (or listed in help)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, Callable[[], click.Command]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self.lazy_commands[cmd_name](), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="bulkbatch")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Progress and errors on stderr: text (a live display on a terminal) or JSON lines "
    "for machines. Also accepted after the command.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_format: str, quiet: bool) -> None:
    """Send one notification to a very large audience through Courier's Bulk API.

    A run goes load -> plan -> send -> track -> results and lives in a run directory
    (runs/<event>-<id>/) from which any stopped run can be resumed. Point it at Courier with
    COURIER_API_KEY (and COURIER_BASE_URL), or rehearse on the built-in emulator.

    Exit codes: 0 the campaign is complete (rejects are reported, not failures); 1 an error
    or a stop after which 'bulkbatch resume RUN_DIR' (or the same command) continues; 2 bad
    usage. The same command run again never sends anyone twice.

    Example:

        bulkbatch demo

        bulkbatch send data/recipients_sample.csv --event welcome --emulator
    """
    ctx.ensure_object(dict)
    ctx.obj.setdefault("log_format", log_format)
    ctx.obj.setdefault("quiet", quiet)
    ctx.obj.setdefault("debug", debug)


for _command in COMMANDS:
    cli.add_command(_command)


def _emulator_command() -> click.Command:
    # Imported on demand: starlette and uvicorn are only needed to serve.
    from bulkbatch.emulator.cli import emulator_command

    return emulator_command


def _webhooks_command() -> click.Command:
    from bulkbatch.webhooks.cli import webhooks_command

    return webhooks_command


cli.lazy_commands["emulator"] = _emulator_command
cli.lazy_commands["webhooks"] = _webhooks_command


def main() -> None:
    """Console-script entry point."""
    install_signal_handlers()
    try:
        cli(prog_name="bulkbatch", auto_envvar_prefix="BULKBATCH")
    finally:
        forget_handled_interrupt()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

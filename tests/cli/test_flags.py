"""One option, one definition: flags, TOML keys, Python keywords and messages agree (#13)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest

import bulkbatch
from bulkbatch.cli import cli
from bulkbatch.options import OPTIONS
from bulkbatch.synth import build_parser

SRC = Path(bulkbatch.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w-])")
NOT_OURS = {"--help", "--version", "--debug"}  # click's, and the root's (also real flags)
# Another program's flags, named where bulkbatch runs it: initdb in bulkbatch.testing.postgres.
OTHER_PROGRAMS = {"--auth", "--no-sync", "--no-instructions"}


def _all_flags() -> set[str]:
    ctx = click.Context(cli)
    flags: set[str] = set()
    commands: list[click.Command] = [cli]
    while commands:
        command = commands.pop()
        for param in command.params:
            flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                commands.append(sub)
    # python -m bulkbatch.synth has its own (argparse) command line
    flags.update(o for a in build_parser()._actions for o in a.option_strings)
    return flags


def test_every_flag_a_message_names_exists() -> None:
    """No message, help text or docstring in the package names a flag the CLI lacks."""
    flags = _all_flags() | NOT_OURS | OTHER_PROGRAMS
    missing: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        for flag in set(FLAG.findall(path.read_text(encoding="utf-8"))):
            if flag not in flags:
                missing.setdefault(flag, []).append(str(path.relative_to(SRC)))
    assert missing == {}


def test_every_option_has_its_flag_on_send() -> None:
    send = cli.get_command(click.Context(cli), "send")
    assert send is not None
    names = {p.name for p in send.params}
    assert set(OPTIONS) <= names


@pytest.mark.parametrize("fn", [bulkbatch.send, bulkbatch.asend, bulkbatch.plan])
def test_front_door_keywords_are_the_options(fn: object) -> None:
    params = inspect.signature(fn).parameters  # type: ignore[arg-type]
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    extra = {"settings", "runs_root", "emulator", "progress"}
    assert keywords - extra == set(OPTIONS)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())


def test_toml_keys_are_the_flags() -> None:
    for opt in OPTIONS.values():
        assert opt.toml_key == opt.flag.removeprefix("--").removeprefix("no-")

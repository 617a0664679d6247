"""Click options generated from :data:`bulkbatch.options.OPTIONS`, and the TOML run file.

A command lists the option names it takes; this module turns each into a ``click.option``
with the option's flag, help, type and checks, so a flag, its TOML key and its Python keyword
cannot drift apart. Every value defaults to None ("not given"): the spec's defaults apply,
and a TOML run file (``--config``) fills what the command line does not give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from bulkbatch.errors import BulkBatchError
from bulkbatch.options import OPTIONS, Option

__all__ = ["RUNFILE_PATH_KEYS", "config_option", "option_flags", "shared_output_options"]

F = TypeVar("F", bound=Callable[..., Any])

RUNFILE_PATH_KEYS = ("inputs", "run_dir", "once_per_ledger")
"""Run-file values that are paths: relative to the file, so a scheduler runs it anywhere."""
LEDGER_BESIDE_RUNFILE = "once-per.sqlite"


def _checked(opt: Option) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: parse raw text (or a TOML value), then check it by the option."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return None
        try:
            value = _parse(opt, value)
            opt.check(value)
        except BulkBatchError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


def _parse(opt: Option, value: Any) -> Any:
    from bulkbatch.spec import parse_json_option, parse_map_option

    if opt.kind == "json":
        return value if isinstance(value, dict) else parse_json_option(opt.name, str(value))
    if opt.kind == "map":
        if isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        return parse_map_option(value)
    if opt.kind == "float":
        return float(value)
    if opt.kind == "int":
        return int(value)
    return value


def _click_type(opt: Option) -> Any:
    if opt.choices:
        return click.Choice(list(opt.choices))
    if opt.kind in ("json", "map"):
        return click.UNPROCESSED  # a run file gives a TOML table: parsed by the option, not str()
    return {"int": click.INT, "float": click.FLOAT}.get(opt.kind)


def _decorator(opt: Option) -> Callable[[F], F]:
    if opt.kind == "bool":
        inverted = opt.flag.startswith("--no-")
        return click.option(
            opt.flag,
            opt.name,
            flag_value=not inverted,
            default=None,
            help=opt.help,
        )
    return click.option(
        opt.flag,
        opt.name,
        type=_click_type(opt),
        multiple=opt.kind == "map",
        metavar=opt.metavar,
        envvar=opt.envvar,
        show_envvar=opt.envvar is not None,
        callback=_checked(opt),
        default=None,
        help=opt.help,
    )


def option_flags(names: Iterable[str]) -> Callable[[F], F]:
    """Decorate a command with the options called ``names``, in the given order."""
    decorators = [_decorator(OPTIONS[n]) for n in names]

    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


_NOT_IN_RUNFILES = frozenset({"config", "log_format", "quiet", "debug", "as_json"})


def _runfile_keys(known: set[str]) -> dict[str, str]:
    """TOML key -> parameter name, for the command's parameters a run file may set."""
    keys = {o.toml_key: o.name for o in OPTIONS.values() if o.name in known}
    for name in known - set(OPTIONS) - _NOT_IN_RUNFILES:
        keys.setdefault(name.replace("_", "-"), name)
    return keys


def _runfile_defaults(path: Path, data: dict[str, Any], known: set[str]) -> dict[str, Any]:
    keys = _runfile_keys(known)
    defaults: dict[str, Any] = {}
    for key, raw in data.items():
        name = keys.get(key) or keys.get(key.replace("_", "-"))
        opt = OPTIONS.get(name or key.replace("-", "_"))
        if opt is not None and opt.secret:
            raise click.BadParameter(
                f"{key!r} in {path} is a secret, and secrets never go in a run file: set "
                f"{opt.envvar} in the environment instead."
            )
        if name is None:
            raise click.BadParameter(
                f"Unknown key {key!r} in {path}. Known keys: {', '.join(sorted(keys))}."
            )
        if name == "inputs":
            raw = [raw] if isinstance(raw, str) else list(raw)
        defaults[name] = raw
    from bulkbatch.storage import is_remote  # pyarrow: only when a run file is read

    base = path.parent
    for name in RUNFILE_PATH_KEYS:
        value = defaults.get(name)
        if isinstance(value, list):
            defaults[name] = [v if is_remote(v) else str(base / v) for v in value]
        elif isinstance(value, str) and not is_remote(value):
            defaults[name] = str(base / value)
    if "once_per" in defaults and "once_per_ledger" in known:
        defaults.setdefault("once_per_ledger", str(base / LEDGER_BESIDE_RUNFILE))
    return defaults


def _load_runfile(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Read a TOML run file into the command's defaults; flags given on the line still win.

    Keys are the option names in kebab-case (``event``, ``data``, ``once-per`` …) plus
    ``inputs``; ``data``/``content``/``override`` may be TOML tables and ``map`` a table of
    TARGET = "COLUMN". Relative paths are relative to the file, and so is the ``--once-per``
    ledger unless the file names another.
    """
    if value is None:
        return None
    import tomllib

    try:
        data = tomllib.loads(value.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.BadParameter(f"{value} not found.", ctx=ctx, param=param) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"{value} is not a valid TOML run file: {exc}. Fix the file (see README, "
            "'Scheduled runs').",
            ctx=ctx,
            param=param,
        ) from None
    assert ctx.command is not None
    known = {p.name for p in ctx.command.params if p.name}
    try:
        defaults = _runfile_defaults(value, data, known)
    except click.BadParameter as exc:
        exc.ctx, exc.param = ctx, param
        raise
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(fn: F) -> F:
    """``--config FILE``: a TOML run file with any of the command's options."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=_load_runfile,
        help="A TOML run file with any of these options (flags given here win).",
    )(fn)


def _remember_output(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value is not False:
        ctx.ensure_object(dict)
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj[str(param.name)] = value
    return value


def shared_output_options(fn: F) -> F:
    """``--log-format``, ``--quiet`` and ``--debug``, accepted after the subcommand too."""
    for d in (
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default=None,
            expose_value=False,
            callback=_remember_output,
            help="Progress and errors on stderr: text (a live display on a terminal) or JSON "
            "lines for machines.",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_remember_output,
            help="No progress output.",
        ),
        click.option(
            "--debug",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_remember_output,
            help="Show full tracebacks on errors.",
        ),
    ):
        fn = d(fn)
    return fn

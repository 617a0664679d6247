"""Opening a campaign: which run directory holds it, and refusing to mix two campaigns.

Where a run lives, in order:

1. ``run_dir`` given and holding a run: that run continues if it is the same campaign (same
   spec and the same input files), else the call is refused, naming both ways forward;
2. ``run_dir`` given and new: the run starts there;
3. no ``run_dir``: ``<runs_root>/<event>-<fingerprint>``, where the fingerprint covers the
   options that decide what is sent and the input files (absolute path, size, mtime). So the
   same command again from the same place finds its run and continues it, and a scheduler's
   retry sends nobody twice even before the campaign id is known.

After planning, the campaign id (:mod:`bulkbatch.identity`) is checked against the per-user
registry: when another directory on this machine already holds the campaign (the same
command run from another working directory), that run continues and the new directory —
which only holds a plan — is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bulkbatch import storage
from bulkbatch.config import Settings
from bulkbatch.errors import InputError, StateError
from bulkbatch.files import private_dir
from bulkbatch.identity import lookup, register
from bulkbatch.options import option
from bulkbatch.spec import RunSpec
from bulkbatch.stages.load import LoadInfo, LoadOptions
from bulkbatch.stages.sources import resolve_sources
from bulkbatch.state import RunState

__all__ = [
    "adopt_registered",
    "check_inputs_unchanged",
    "discard",
    "file_fingerprints",
    "load_options",
    "open_run",
    "stored_load_info",
]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "run"


def is_frame(source: object) -> bool:
    """True for a DataFrame/Arrow/DuckDB source, False for paths."""
    return not isinstance(source, str | Path) and not (
        isinstance(source, Sequence) and all(isinstance(s, str | Path) for s in source)
    )


def sources_of(source: object) -> tuple[str, ...]:
    """The path arguments of a path source."""
    if isinstance(source, str | Path):
        return (str(source),)
    assert isinstance(source, Sequence)
    return tuple(str(s) for s in source)


def file_fingerprints(sources: Sequence[str]) -> dict[str, str]:
    """``{absolute path: "size:mtime_ns"}`` of every input file, taken before loading;
    ``{s3:// URL: "size:ETag"}`` for an object (:func:`bulkbatch.storage.fingerprint`).

    :raises InputError: a path, glob or folder matches nothing (from ``resolve_sources``)
    """
    out: dict[str, str] = {}
    for name in resolve_sources(list(sources)):
        if storage.is_remote(name):
            out[name] = storage.fingerprint(name)
            continue
        path = Path(name).resolve()
        st = path.stat()
        out[str(path)] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def check_inputs_unchanged(state: RunState) -> None:
    """Refuse to load input files that changed since the run started (named)."""
    recorded: dict[str, str] = state.inputs.get("file_fingerprints") or {}
    if not recorded:
        return
    for path, stamp in recorded.items():
        remote = storage.is_remote(path)
        try:
            if remote:  # a bucket that cannot be read raises its own InputError
                now = storage.fingerprint(path, missing_ok=True) or "missing"
            else:
                st = Path(path).stat()
                now = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            now = "missing"
        if now != stamp:
            change = "size or ETag" if remote else "size or modification time"
            what = "is gone" if now == "missing" else f"changed ({change})"
            raise InputError(
                f"Input {path} {what} since run {state.run_id} started, before its rows were "
                "loaded. Put the original file back and resume, or send the new file as a new "
                "run (without --run-dir, or with another one)."
            )


def _default_dir(runs_root: Path, spec: RunSpec, files: dict[str, str] | None) -> Path:
    name = _slug(spec.campaign.event or spec.campaign.template or "content")
    if files is None:  # a DataFrame: no stable name; the registry catches repeats after plan
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return runs_root / f"{name}-{stamp}"
    shape = {"spec": spec.outcome_values(), "files": files}
    digest = hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()
    shard = spec.shard_of
    suffix = f"-shard{shard[0]}of{shard[1]}" if shard else ""
    return runs_root / f"{name}-{digest[:12]}{suffix}"


def _same_campaign(state: RunState, spec: RunSpec, files: dict[str, str] | None) -> bool:
    stored = RunSpec.from_json(state.spec)
    same_files = files is None or state.inputs.get("file_fingerprints") == files
    return stored.outcome_values() == spec.outcome_values() and same_files


def open_run(
    spec: RunSpec,
    source: object,
    *,
    settings: Settings,
    runs_root: Path,
    run_dir: Path | None,
    emulator: str | None,
) -> tuple[RunState, bool]:
    """The run state for this campaign: an existing one to continue, or a new one.

    Returns ``(state, existed)``.
    """
    spec.campaign.message()  # no event: fail before any directory exists
    frame = is_frame(source)
    files = None if frame else file_fingerprints(spec.audience.sources)
    path = run_dir or _default_dir(runs_root, spec, files)
    if RunState.exists(path):
        state = RunState.load(path)
        if not _same_campaign(state, spec, files):
            raise StateError(
                f"Run directory {path} holds another campaign (other inputs or options), so it "
                f"cannot continue with these. Run 'bulkbatch resume {path}' to finish it as it "
                f"was, or pass another {option('run_dir').flag} to start this one."
            )
        return state, True
    try:
        private_dir(path)
    except OSError as exc:
        raise StateError(
            f"Cannot create the run directory {path}: {exc.strerror or exc}. Choose a writable "
            f"place with {option('run_dir').flag}."
        ) from None
    state = RunState(
        run_dir=path,
        run_id=path.name,
        emulator=emulator,
        spec=spec.to_json(),
        auto_job_size=spec.sending.max_job_size is None,
        inputs={"file_fingerprints": files} if files else {},
    )
    state.save()
    return state, False


def adopt_registered(state: RunState, base_url: str) -> RunState | None:
    """After plan: the run that already holds this campaign at this Courier elsewhere on this
    machine, if any (the caller then removes this directory, which holds only a plan); else
    register this one. Runs on their own emulator are never shared."""
    if state.emulator:
        return None
    event = str(state.message.get("event", ""))
    record = lookup(state.campaign, base_url)
    if record is None or record.run_dir.resolve() == state.run_dir.resolve():
        register(state.campaign, base_url, state.run_dir, event)
        return None
    return RunState.load(record.run_dir)


_RUN_FILES = (
    "state.json",
    "run.duckdb",
    "run.duckdb.wal",
    "plan.parquet",
    "rejects.parquet",
    "duplicates.parquet",
    "emulator.sqlite",
    "emulator.sqlite-wal",
    "emulator.sqlite-shm",
)


def discard(state: RunState) -> None:
    """Remove what a run that sent nothing wrote (a plan; another directory holds its
    campaign, or the command was refused). Only bulkbatch's own files go: a --run-dir that
    held anything else keeps it."""
    if any(j.job_id for j in state.jobs) or state.done("send"):
        return
    for name in _RUN_FILES:
        (state.run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(state.run_dir / ".spill", ignore_errors=True)
    with contextlib.suppress(OSError):
        state.run_dir.rmdir()  # only when nothing else is left


def load_options(spec: RunSpec) -> LoadOptions:
    """The load stage's options, from the run's spec."""
    a = spec.audience
    return LoadOptions(
        sources=a.sources,
        format=a.format,  # type: ignore[arg-type]  # checked against the option's choices
        delimiter=a.delimiter,
        quote=a.quote,
        encoding=a.encoding,
    )


def stored_load_info(state: RunState) -> LoadInfo:
    """The load stage's report of a run loaded before, from its state."""
    fields = {f.name for f in dataclasses.fields(LoadInfo)}
    values: dict[str, Any] = {
        "rows": int(state.inputs.get("rows", 0)),
        "files": tuple(state.inputs.get("files", ())),
        "columns": tuple(state.inputs.get("columns", ())),
        "fingerprint": "",
        "seconds": float(state.timings.get("load", 0.0)),
    }
    return LoadInfo(**{k: v for k, v in values.items() if k in fields})

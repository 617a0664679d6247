"""bulkbatch: send one notification to a very large audience through Courier's Bulk API.

The same core serves the command line and Python::

    import bulkbatch

    run = bulkbatch.send("audience.parquet", event="welcome", data={"offer": "20%"})
    run.results()          # polars DataFrame, one row per input row
    run.summary()          # the counts, which always add up

    with bulkbatch.Emulator() as emu:   # a local Courier to rehearse against
        ...
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from bulkbatch import errors
from bulkbatch.config import Settings
from bulkbatch.courier import CourierClient
from bulkbatch.demo import demo
from bulkbatch.emulator import Emulator
from bulkbatch.errors import BulkBatchError
from bulkbatch.pipeline import (
    Run,
    RunOptions,
    RunStatus,
    asend,
    plan,
    report,
    results,
    resume,
    send,
    status,
)
from bulkbatch.progress import ProgressEvent
from bulkbatch.stages.load import LoadOptions
from bulkbatch.stages.plan import PlanInfo, PlanOptions

try:
    __version__ = version("bulkbatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BulkBatchError",
    "CourierClient",
    "Emulator",
    "LoadOptions",
    "PlanInfo",
    "PlanOptions",
    "ProgressEvent",
    "Run",
    "RunOptions",
    "RunStatus",
    "Settings",
    "__version__",
    "asend",
    "demo",
    "errors",
    "plan",
    "report",
    "results",
    "resume",
    "send",
    "status",
]

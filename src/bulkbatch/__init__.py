"""bulkbatch: send one notification to a very large audience through Courier's Bulk API.

The same core serves the command line and Python::

    import bulkbatch

    run = bulkbatch.send("audience.parquet", event="welcome", data={"offer": "20%"})
    run.read_results()     # polars DataFrame, one row per input row
    run.summary()          # the counts, which always add up

    with bulkbatch.Emulator() as emu:   # a local Courier to rehearse against
        ...

Names are imported on first use (PEP 562), so ``import bulkbatch``, ``bulkbatch --help``
and the emulator process do not load DuckDB, polars and pyarrow until they are needed.
No module at the package root shares a name with a function here (the stages live in
``bulkbatch.stages``), so a submodule import can never shadow ``bulkbatch.plan`` & co.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulkbatch import errors
    from bulkbatch.client.courier import CourierClient
    from bulkbatch.config import Settings
    from bulkbatch.emulator import Emulator
    from bulkbatch.errors import BulkBatchError
    from bulkbatch.pipeline import (
        Pipeline,
        Run,
        RunStatus,
        asend,
        cancel,
        merge,
        plan,
        report,
        results,
        resume,
        runs,
        send,
        status,
    )
    from bulkbatch.progress import ProgressEvent
    from bulkbatch.sample import demo
    from bulkbatch.spec import RunSpec
    from bulkbatch.stages.load import LoadOptions
    from bulkbatch.stages.merge import MergeInfo
    from bulkbatch.stages.plan import PlanInfo, PlanOptions

try:
    __version__ = version("bulkbatch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_HOME = {
    "BulkBatchError": "bulkbatch.errors",
    "CourierClient": "bulkbatch.client.courier",
    "Emulator": "bulkbatch.emulator",
    "LoadOptions": "bulkbatch.stages.load",
    "PlanInfo": "bulkbatch.stages.plan",
    "PlanOptions": "bulkbatch.stages.plan",
    "ProgressEvent": "bulkbatch.progress",
    "Run": "bulkbatch.pipeline",
    "Pipeline": "bulkbatch.pipeline",
    "RunSpec": "bulkbatch.spec",
    "RunStatus": "bulkbatch.pipeline",
    "Settings": "bulkbatch.config",
    "asend": "bulkbatch.pipeline",
    "cancel": "bulkbatch.pipeline",
    "runs": "bulkbatch.pipeline",
    "merge": "bulkbatch.pipeline",
    "MergeInfo": "bulkbatch.stages.merge",
    "demo": "bulkbatch.sample",
    "plan": "bulkbatch.pipeline",
    "report": "bulkbatch.pipeline",
    "results": "bulkbatch.pipeline",
    "resume": "bulkbatch.pipeline",
    "send": "bulkbatch.pipeline",
    "status": "bulkbatch.pipeline",
}

__all__ = [
    "BulkBatchError",
    "CourierClient",
    "Emulator",
    "LoadOptions",
    "MergeInfo",
    "Pipeline",
    "PlanInfo",
    "PlanOptions",
    "ProgressEvent",
    "Run",
    "RunSpec",
    "RunStatus",
    "Settings",
    "__version__",
    "asend",
    "cancel",
    "demo",
    "errors",
    "merge",
    "plan",
    "report",
    "results",
    "resume",
    "runs",
    "send",
    "status",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("bulkbatch.errors")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'bulkbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The sample audience, and the README's first command: sending it end to end to a local emulator."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from bulkbatch.config import Settings
from bulkbatch.pipeline import Run, send
from bulkbatch.progress import NullProgress, Progress

__all__ = ["DEMO_DATA", "demo", "sample_path"]

DEMO_DATA = {
    "company": "Acme Corp",
    "offer": "20% off your first month",
    "support_email": "help@acme.example.com",
}
SAMPLE = Path("data") / "recipients_sample.csv"


def sample_path() -> Path:
    """The committed sample audience: ``./data/`` first, then the source checkout's."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / SAMPLE
        if candidate.is_file():
            return candidate
    # Installed without the repository: make the same sample (it is deterministic).
    from bulkbatch.synth import write_sample

    target = Path.cwd() / "runs" / "recipients_sample.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_sample(target)
    return target


def demo(run_dir: str | Path | None = None, *, progress: Progress = NullProgress) -> Run:
    """Send the sample audience through an in-process emulator and return the finished run.

    The emulator keeps its state in the run directory (``emulator.sqlite``), so even the
    demo run can be resumed after a kill.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return send(
        sample_path(),
        event="welcome",
        data=DEMO_DATA,
        # a local emulator: no need to find the rate limit slowly
        settings=Settings(poll_interval=0.1, start_rate=2000),
        run_dir=run_dir or Path("runs") / f"demo-{stamp}",
        # Each demo is a new campaign instance on its own emulator, never a repeat of the last.
        run_id=f"demo-{stamp}",
        emulator="immediate",
        progress=progress,
        messages=True,
    )

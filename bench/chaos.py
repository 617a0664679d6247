"""Chaos at benchmark scale: the scenario of :mod:`bulkbatch.testing.chaos`, as a report.

.venv/bin/python bench/chaos.py --users 1000000      # prints a Markdown report
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bulkbatch.testing.chaos import FAULTS, run_chaos, run_restart, verdict


def main() -> None:
    p = argparse.ArgumentParser(
        description="Chaos: kills and an emulator restart; nothing lost or sent twice."
    )
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--faults", default=FAULTS, help=f"emulator faults (default {FAULTS})")
    p.add_argument("--no-restart", action="store_true", help="skip the emulator-restart scenario")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bb-chaos-") as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        chaos = run_chaos(args.users, Path(tmp) / "a", seed=args.seed, faults=args.faults)
        restart = None if args.no_restart else run_restart(args.users, Path(tmp) / "b")
    lines = [
        f"Faults: `{args.faults}`, emulator `--db`, progression `polls:3`; {args.users:,} users.",
        "",
        "| kill | phase | users accepted at the kill | run started | process lived s |",
        "|---:|---|---:|---|---:|",
    ]
    for n, k in enumerate(chaos["kills"], 1):
        lines.append(
            f"| {n} | {k['phase']} | {k['users_accepted']:,} | {'yes' if k['runs'] else 'no'} "
            f"| {k['seconds_alive']} |"
        )
    c = chaos["summary"]["counts"]
    problems = verdict(chaos) or ["none"]
    lines += [
        "",
        (
            f"- chaos run: {chaos['total_seconds']} s in all; the final resume took "
            f"{chaos['last_resume_seconds']} s; {c['input_rows']:,} rows = {c['ingested']:,} "
            f"ingested + {c['duplicates']:,} duplicates + {c['rejected']:,} rejected"
        ),
        (
            f"- server: {chaos['stats']['jobs_created']} jobs created and "
            f"{chaos['stats']['runs']} runs for the run's {len(chaos['summary']['jobs'])} jobs, "
            f"{chaos['stats']['users_accepted']:,} users accepted, the most any recipient was "
            f"accepted: {chaos['stats']['max_accepted_per_recipient']}; "
            f"429s {chaos['stats']['requests_by_status'].get('429', 0):,}, "
            f"500s {chaos['stats']['requests_by_status'].get('500', 0):,}, "
            f"dropped connections {chaos['stats']['dropped_connections']:,}"
        ),
        f"- problems (lost or duplicated): {', '.join(problems)}",
    ]
    if restart is not None:
        lines.append(
            f"- emulator restart: stopped at {restart['accepted_at_stop']:,} users accepted, "
            f"down {restart['downtime_seconds']} s; the sender rode it out (exit "
            f"{restart['sender_exit']}) and finished in {restart['total_seconds']} s; "
            f"problems: {', '.join(verdict(restart)) or 'none'}"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

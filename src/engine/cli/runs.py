"""`runs list` and `runs show RUN_ID`: what the store recorded, as plain columns or JSON.

Plain text on purpose (no colour, no wrapping): it reads in a terminal, in CI logs and in `grep`.
Times are UTC.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from engine.cli.run import open_engine
from engine.cli.view import _fmt_duration as fmt_duration
from engine.domain.states import SubplanState
from engine.ports.store import RunRecord, SubplanRecord


async def list_runs(args: argparse.Namespace) -> int:
    async with open_engine(args) as eng:
        records = await eng.store.list_runs(limit=args.limit or None)
        location = eng.store.location
    if args.json:
        print(json.dumps([_jsonable(asdict(r)) for r in records], indent=2))
        return 0
    if not records:
        print(f"no runs recorded in {location}")
        return 0
    rows = [
        [r.id, r.plan_name, r.state.value, fmt_time(r.started_at), fmt_duration(r.duration)]
        for r in records
    ]
    print(_table(["RUN", "PLAN", "STATE", "STARTED (UTC)", "DURATION"], rows, right={4}))
    return 0


async def show_run(args: argparse.Namespace) -> int:
    async with open_engine(args) as eng:
        run = await eng.get_run(args.run_id)
        subplans = await eng.store.list_subplans(run.id)
        events = await eng.store.list_events(run.id) if args.events else []
    if args.json:
        data = {
            "run": _jsonable(asdict(run)),
            "subplans": [_jsonable(asdict(s)) for s in subplans],
        }
        if args.events:
            data["events"] = [e.to_dict() for e in events]
        print(json.dumps(data, indent=2))
        return 0
    print(describe_run(run, subplans))
    for event in events:
        print(event.to_json())
    return 0


def describe_run(run: RunRecord, subplans: Sequence[SubplanRecord]) -> str:
    lines = [f"run {run.id}: plan {run.plan_name}, {run.state.value}"]
    if run.plan_source:
        lines.append(f"  plan file:    {run.plan_source}")
    if run.resumed_from:
        lines.append(f"  resumed from: {run.resumed_from} (its completed subplans were kept)")
    lines.append(f"  started:      {fmt_time(run.started_at)} UTC")
    lines.append(f"  finished:     {fmt_time(run.finished_at)} UTC")
    lines.append(f"  duration:     {fmt_duration(run.duration)}")
    if run.error:
        lines.append(f"  error:        {run.error}")
    lines.append("")
    rows = [
        [
            "  " * s.path.count("/") + s.path.rpartition("/")[2],
            s.state.value,
            fmt_duration(s.duration),
            str(s.attempts),
            _one_line(s.error) if s.error and s.state is not SubplanState.COMPLETED else "",
        ]
        for s in subplans
    ]
    lines.append(_table(["SUBPLAN", "STATE", "DURATION", "ATTEMPTS", "ERROR"], rows, right={2, 3}))
    for s in subplans:
        if s.state is SubplanState.FAILED and s.kind != "group" and (s.output_tail or s.log_path):
            lines.append(f"\n{s.path} failed: {s.error}")
            if s.output_tail:
                lines.append("  last output:")
                lines.extend(f"    {line}" for line in s.output_tail.splitlines())
            if s.log_path:
                lines.append(f"  log: {s.log_path}")
    return "\n".join(lines)


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _one_line(text: str, width: int = 100) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= width else first[: width - 1] + "…"


def _table(header: list[str], rows: list[list[str]], *, right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}

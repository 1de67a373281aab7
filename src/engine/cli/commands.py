"""Every subcommand's flags, and the registry that wires them into the parser."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import run as run_cmd


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("run", help="run a plan file")
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--max-parallel", type=int, metavar="N")
    p.add_argument("--failure-mode", choices=["fail_fast", "continue_on_error"], metavar="M")
    p.add_argument("--events", metavar="PATH|-", help="write every event as a JSON line")
    p.add_argument("--db", metavar="URL", help="database URL")
    p.add_argument("--lock-wait", type=float, metavar="SECONDS", default=0.0)
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    p.set_defaults(handler=run_cmd.run)

    p = sub.add_parser("validate", help="check a plan file without running it")
    p.add_argument("plan", metavar="PLAN")
    p.set_defaults(handler=run_cmd.validate)

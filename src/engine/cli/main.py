"""Argument parsing and the single error boundary of the CLI.

Every error message passes through the redactor on its way out (`engine.redaction`): a database
URL's password, a bearer token or a secret environment value quoted by any layer is masked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import anyio

from engine.cli import commands
from engine.errors import EngineError
from engine.redaction import Redactor

Handler = Callable[[argparse.Namespace], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad flags already; make its message match ours."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        if len(message) > 300:  # argparse quotes a bad value whole, however long
            message = f"{message[:297]}..."
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Run plans of parallel subplans.")
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        code = anyio.run(handler, args)
    except EngineError as exc:
        redact = Redactor()
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {redact(line)}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

"""The command line: `python -m engine COMMAND`.

One error boundary (`main`): an EngineError becomes its message on stderr and its exit code; a
user never sees a traceback for bad input.
"""

from engine.cli.main import main

__all__ = ["main"]

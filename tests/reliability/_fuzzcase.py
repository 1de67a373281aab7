"""What one fuzz case is: the files of a folder, an argv and an environment (see _fuzzkit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

#: What every generated step would create (`touch`, in the plan's folder): it must never exist.
MARKER = "fuzz-marker"
#: A plan that would run, for the cases where only the configuration is bad.
VALID_PLAN = (
    f"name: fuzz\nsubplans:\n  - {{name: shell, run: touch {MARKER}}}\n"
    f"  - {{name: argv, run: [touch, {MARKER}]}}\n"
).encode()

#: The `draw` of a hypothesis composite strategy.
Draw = Callable[[st.SearchStrategy[Any]], Any]


@dataclass(frozen=True)
class Case:
    """One bad input: create `folders` and `files`, then `python -m engine *argv` with `env`."""

    category: str
    argv: tuple[str, ...]
    files: tuple[tuple[str, bytes], ...] = ()
    folders: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: Each must appear in stderr: the file, variable or flag the problem is in.
    expect: tuple[str, ...] = ()
    #: The flag is checked only once the store is open (`--events DIR`): the database may be
    #: created, but no run may be recorded in it.
    store_opens: bool = False
    note: str = ""

    def describe(self) -> str:
        env = " ".join(f"{k}={v[:60]!r}" for k, v in self.env)
        files = ", ".join(f"{name} ({len(data)} bytes)" for name, data in self.files)
        head = f"[{self.category}] {self.note}".strip()
        return f"{head}\n    argv: {list(self.argv)!r}\n    env: {env}\n    files: {files}"

"""Plan files: YAML text -> `Plan`, with every problem of a file reported at once.

This package owns reading and checking a plan file, and turning everything wrong with it into
`PlanProblem`s (file, subplan path, field, what is allowed, what was found) inside ONE
`PlanValidationError`. It must never let a traceback, a PyYAML or a raw pydantic message escape,
and it never runs anything. This module reads the bytes and puts the passes together;
`engine.planfile.loader` turns text into data (PyYAML, hardened) and
`engine.planfile.problems` says what is wrong with data that does not validate.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from engine.domain.plan import Plan, PlanProblem
from engine.errors import PlanValidationError
from engine.planfile.loader import kind_of, load_yaml, shape_problem
from engine.planfile.problems import LAST, Located, fail, structure, translate

__all__ = ["MAX_BYTES", "load_plan", "parse_plan", "plan_from_data"]

MAX_BYTES = 10 * 1024 * 1024  # a plan file larger than this is not a plan file
MAX_PROBLEMS = 100  # shown; the rest are counted

# --------------------------------------------------------------------------- public API


def load_plan(path: str | Path) -> Plan:
    """Read, parse and validate a plan file; the plan remembers where it came from."""
    source = os.fspath(path)
    return parse_plan(_read(Path(path), source), source).with_source(Path(path))


def parse_plan(text: str | bytes, source: str) -> Plan:
    """Parse and validate the text of a plan file; `source` names the file in messages."""
    decoded = _decode(text, source)
    data = load_yaml(decoded, source)
    if data is None and decoded.strip():
        fail(source, "holds no plan (only comments or null); it needs at least name and subplans")
    return plan_from_data(data, source)


def plan_from_data(data: object, source: str) -> Plan:
    """Validate data already loaded (the dict YAML or JSON gives) into a Plan."""
    if data is None:
        fail(source, "is empty; a plan needs at least name and subplans")
    if not isinstance(data, dict):
        fail(source, f"must be a mapping with name and subplans, got {kind_of(data)}")
    shape = shape_problem(data)
    if shape is not None:
        fail(source, shape)
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        # Field errors stop pydantic before the model's structural check: do that pass here.
        located = [*translate(exc, data), *structure(data)]
    except PlanValidationError as exc:
        located = structure(data)
        known = {item.problem for item in located}
        located += [Located(LAST, p) for p in exc.problems if p not in known]
    raise PlanValidationError(source, _finish(located))


def _finish(located: list[Located]) -> list[PlanProblem]:
    """Deduplicate, order by position in the file, and cap the list."""
    seen: set[PlanProblem] = set()
    unique: list[Located] = []
    for item in located:
        if item.problem not in seen:
            seen.add(item.problem)
            unique.append(item)
    unique.sort(key=lambda item: item.key)
    problems = [item.problem for item in unique[:MAX_PROBLEMS]]
    if len(unique) > MAX_PROBLEMS:
        more = len(unique) - MAX_PROBLEMS
        problems.append(PlanProblem("", None, f"... and {more} more problem(s) not shown"))
    return problems


def _read(path: Path, source: str) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        fail(source, "no such file")
    except IsADirectoryError:
        fail(source, "is a directory, not a plan file")
    except PermissionError:
        fail(source, "cannot be read: permission denied")
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fail(source, f"cannot be read: {reason}")


def _decode(text: str | bytes, source: str) -> str:
    if len(text) > MAX_BYTES:
        fail(source, f"is too large: more than {MAX_BYTES // (1024 * 1024)} MB")
    if isinstance(text, bytes):
        if b"\x00" in text:
            fail(source, "is a binary file, not YAML text")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            fail(source, f"is not UTF-8 text (byte 0x{text[exc.start]:02x} at offset {exc.start})")
    if "\x00" in text:
        fail(source, "is a binary file, not YAML text")
    return text.removeprefix("\ufeff")

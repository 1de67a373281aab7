"""Plan and Subplan models (schema version 1) and the structural checks behind them.

Field-level rules (types, ranges) are pydantic constraints; rules that span fields or siblings
(exactly one of run/call/subplans, unique names, `needs`, cycles) are collected by
`structural_problems` so that every problem of a plan is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.domain.graph import find_cycle
from engine.domain.states import FailureMode
from engine.errors import PlanValidationError

MAX_PARALLEL_LIMIT = 32
DEFAULT_MAX_PARALLEL = 4
MAX_LISTED = 10  # names a message lists (siblings, a cycle)
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
CALL_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def _scalar_to_str(value: object) -> object:
    """YAML reads `CI: 1` as an int; environment values are strings, so accept scalars."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    return value


def _exactly_int(value: object) -> object:
    """A Literal accepts `true` and `1.0` as 1; a schema version must be the integer itself."""
    if type(value) is not int:
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": "1"})
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate (YAML "\ud800"): not text at all
        return False
    return True


def _process_text(value: object) -> object:
    """Text that reaches a process (command, argv, environment, folder) must be text the OS can
    take: no NUL, no lone surrogate. Rejected here rather than as a crash mid-run."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if isinstance(text, str) and "\x00" in text:
            raise PydanticCustomError("nul_character", "String should not contain a NUL character")
        if isinstance(text, str) and not _encodable(text):
            raise PydanticCustomError("string_unicode", "Input should be a valid string")
    return value


def _env_name(value: str) -> str:
    """An environment variable's name: not empty, and neither `=` nor NUL (the OS refuses them)."""
    if not value or "=" in value or "\x00" in value or not _encodable(value):
        raise PydanticCustomError(
            "env_name", "String should be a variable name, not empty and without = or NUL"
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_process_text)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
MaxParallel = Annotated[int, Field(ge=1, le=MAX_PARALLEL_LIMIT, strict=True)]
# strict: YAML `timeout: yes` or `timeout: "30"` must not pass as a number (ints still do).
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One thing wrong with a plan: where (subplan path, field) and what."""

    path: str
    field: str | None
    message: str

    def render(self, source: str) -> str:
        where = [source]
        if self.path:
            where.append(self.path)
        head = ": ".join(where)
        return f"{head}: {self.field} {self.message}" if self.field else f"{head}: {self.message}"


class Subplan(BaseModel):
    """One node of a plan: a shell/argv command (`run`), a Python callable (`call`) or a group."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Name
    run: Annotated[
        Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1)] | None,
        BeforeValidator(_process_text),
    ] = None
    call: Annotated[str, Field(pattern=CALL_PATTERN)] | None = None
    with_: dict[str, Any] | None = Field(default=None, alias="with")
    subplans: list[Subplan] | None = None
    needs: list[str] = Field(default_factory=list)
    timeout: Seconds | None = None
    retries: Annotated[int, Field(ge=0, le=10, strict=True)] = 0
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    cwd: Annotated[str | None, BeforeValidator(_process_text)] = None
    max_parallel: MaxParallel | None = None
    failure_mode: FailureMode | None = None
    locks: list[Name] = Field(default_factory=list)

    @property
    def kind(self) -> Literal["run", "call", "group"]:
        if self.subplans is not None:
            return "group"
        return "call" if self.call is not None else "run"


class Plan(BaseModel):
    """A whole plan file. `source` (where it was read from) is not part of the schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    version: Annotated[Literal[1], BeforeValidator(_exactly_int)] = 1
    name: Name
    project: Name | None = None
    max_parallel: MaxParallel | None = None
    failure_mode: FailureMode | None = None
    timeout: Seconds | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    cwd: Annotated[str | None, BeforeValidator(_process_text)] = None
    subplans: Annotated[list[Subplan], Field(min_length=1)]

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_structure(self) -> Plan:
        problems = structural_problems(self)
        if problems:
            raise PlanValidationError(self.name, problems)
        return self

    @property
    def source(self) -> Path | None:
        """The plan file this plan was loaded from, if any."""
        # Read from pydantic's private storage directly: `self._source` goes through
        # `BaseModel.__getattr__`, which costs ~10 µs, and a run reads it several times.
        private = self.__pydantic_private__
        return private.get("_source") if private is not None else None

    @property
    def base_dir(self) -> Path:
        """The folder relative `cwd` values start from: the plan file's folder, else the CWD."""
        source = self.source
        return source.parent if source is not None else Path.cwd()

    def with_source(self, source: Path, *, resolved: bool = False, copy: bool = True) -> Plan:
        """This plan, loaded from `source` (`resolved`: the path is absolute and final).
        `copy=False` sets it on this plan itself: only for one that nobody else holds yet
        (a worker builds one per job, thousands a second)."""
        plan = self.model_copy() if copy else self
        plan._source = source if resolved else source.resolve()
        return plan

    def walk(self) -> list[tuple[str, Subplan]]:
        """Every subplan with its path, parents before children."""
        out: list[tuple[str, Subplan]] = []
        _walk("", self.subplans, out)
        return out


def _walk(prefix: str, children: list[Subplan], out: list[tuple[str, Subplan]]) -> None:
    # A module function, not a nested one: a nested function that calls itself is a reference
    # cycle, which keeps what it saw alive until the garbage collector finds it.
    for child in children:
        path = f"{prefix}{child.name}"
        out.append((path, child))
        if child.subplans is not None:
            _walk(f"{path}/", child.subplans, out)


def structural_problems(plan: Plan) -> list[PlanProblem]:
    """Cross-field and sibling rules, for the whole tree at once."""
    problems: list[PlanProblem] = []
    _check_group(plan.subplans, "", problems)
    return problems


def _check_group(children: list[Subplan], prefix: str, problems: list[PlanProblem]) -> None:
    seen: set[str] = set()
    for child in children:
        path = f"{prefix}{child.name}"
        if child.name in seen:
            problems.append(PlanProblem(path, "name", "is used by more than one sibling"))
        seen.add(child.name)
        kinds = [k for k in ("run", "call", "subplans") if getattr(child, k) is not None]
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none of them"
            problems.append(
                PlanProblem(path, None, f"needs exactly one of run, call, subplans; found {found}")
            )
        if child.with_ is not None and child.call is None:
            problems.append(PlanProblem(path, "with", "is only allowed together with call"))
        if child.subplans is None:
            for key in ("max_parallel", "failure_mode"):
                if getattr(child, key) is not None:
                    problems.append(
                        PlanProblem(path, key, "only applies to a group (a subplan with subplans)")
                    )
        else:
            if not child.subplans:
                problems.append(PlanProblem(path, "subplans", "must not be empty"))
            if child.retries:
                problems.append(
                    PlanProblem(path, "retries", "only applies to run and call steps, not groups")
                )
        if len(set(child.needs)) != len(child.needs):
            problems.append(PlanProblem(path, "needs", "lists a sibling more than once"))
        if child.name in child.needs:
            problems.append(PlanProblem(path, "needs", "names the subplan itself"))
    names = {c.name for c in children}
    for child in children:
        for dep in child.needs:
            if dep not in names:
                message = unknown_sibling(dep, sorted(names - {child.name}))
                problems.append(PlanProblem(f"{prefix}{child.name}", "needs", message))
    cycle = find_cycle({c.name: [d for d in c.needs if d != c.name] for c in children})
    if cycle is not None:
        where = prefix.rstrip("/")
        problems.append(PlanProblem(where, "needs", f"form a cycle: {listed(cycle, ' -> ')}"))
    for child in children:
        if child.subplans:
            _check_group(child.subplans, f"{prefix}{child.name}/", problems)


def unknown_sibling(dep: str, siblings: list[str]) -> str:
    """A `needs` entry that names no sibling: bounded, however long the name or many the
    siblings."""
    shown = repr(dep) if len(dep) <= 60 else f"{dep[:60]!r}... ({len(dep)} characters)"
    return f"names unknown sibling {shown} (siblings: {listed(siblings) or 'no siblings'})"


def listed(names: list[str], separator: str = ", ") -> str:
    """Names as a message lists them: the first ten, then how many there are in all."""
    if len(names) <= MAX_LISTED:
        return separator.join(names)
    return separator.join(names[:MAX_LISTED]) + f"{separator}... ({len(names)} in all)"


class ParallelExecutionConfig(BaseModel):
    """The effective cap and failure mode of one group, after precedence resolution."""

    model_config = ConfigDict(frozen=True)

    max_parallel: MaxParallel = DEFAULT_MAX_PARALLEL
    failure_mode: FailureMode = FailureMode.FAIL_FAST

    def for_group(
        self, max_parallel: int | None, failure_mode: FailureMode | None
    ) -> ParallelExecutionConfig:
        """Nearest value wins: the group's own, else this (inherited) one."""
        if max_parallel is None and failure_mode is None:
            return self
        return ParallelExecutionConfig(
            max_parallel=max_parallel if max_parallel is not None else self.max_parallel,
            failure_mode=failure_mode if failure_mode is not None else self.failure_mode,
        )

"""What a finished run returns: the run's state and every subplan's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from engine.domain.states import RunState, SubplanState


@dataclass(frozen=True, slots=True)
class SubplanResult:
    """One subplan's outcome. A plain dataclass: a run of 10,000 steps builds 10,000 of them."""

    path: str
    kind: str
    state: SubplanState
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    output_tail: str | None = None
    log_path: str | None = None
    #: The return value of a `call` step (in-process only; never persisted).
    result: Annotated[Any, Field(exclude=True)] = field(default=None, repr=False, compare=False)


class RunResult(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    run_id: str
    plan: str
    state: RunState
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    subplans: dict[str, SubplanResult]
    resumed_from: str | None = None
    #: The exception behind a failed run (SubplanExecutionError / AggregateSubplanError / ...).
    exception: BaseException | None = Field(default=None, exclude=True, repr=False)

    @property
    def ok(self) -> bool:
        return self.state is RunState.COMPLETED

    def raise_for_state(self) -> None:
        """Re-raise the error of a run that did not complete."""
        if self.exception is not None:
            raise self.exception

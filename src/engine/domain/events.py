"""Typed events: one for every transition of a run or a subplan (schema version 1).

The same objects feed the terminal view, `--events` JSON lines, the store and `async for`
subscribers. `from`/`to` are serialized under those names (`from` is a Python keyword).
Later event families (jobs, locks, delegations) add classes here; the `type` strings are stable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.domain.states import RunState, SubplanState

EVENT_SCHEMA_VERSION = 1


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    v: int = EVENT_SCHEMA_VERSION
    type: str
    at: datetime
    seq: int = 0
    run_id: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RunStateChanged(Event):
    type: Literal["run.state"] = "run.state"
    plan: str
    from_: RunState | None = Field(default=None, alias="from")
    to: RunState
    error: str | None = None


class SubplanStateChanged(Event):
    type: Literal["subplan.state"] = "subplan.state"
    path: str
    from_: SubplanState = Field(alias="from")
    to: SubplanState
    attempt: int = 0
    error: str | None = None
    duration: float | None = None


class SubplanAttemptFailed(Event):
    """An attempt failed and another follows after `retry_in` seconds (the subplan stays running)."""

    type: Literal["subplan.retry"] = "subplan.retry"
    path: str
    attempt: int
    error: str
    retry_in: float


AnyEvent = RunStateChanged | SubplanStateChanged | SubplanAttemptFailed

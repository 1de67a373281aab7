"""The job model: its one transition table, and the versioned payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

import pytest

from engine.domain.job import (
    JOB_PAYLOAD_VERSION,
    AsyncJob,
    JobOutcome,
    check_job_transition,
    deserialize_job_payload,
    serialize_job_payload,
)
from engine.domain.plan import Plan
from engine.domain.states import TERMINAL_JOB_STATUSES, VALID_JOB_TRANSITIONS, AsyncJobStatus
from engine.errors import InvalidJobTransitionError, InvalidTransitionError, JobPayloadError

S = AsyncJobStatus
LEGAL = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.QUEUED),
}
PLAN = Plan.model_validate(
    {
        "name": "nightly",
        "env": {"CI": "1"},
        "cwd": "sub",
        "subplans": [{"name": "a", "call": "m:f", "with": {"x": 1}}, {"name": "b", "run": "true"}],
    }
)


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL))
def test_legal_transitions_pass(old: S, new: S) -> None:
    check_job_transition("j", old, new)


@pytest.mark.parametrize(("old", "new"), sorted(set(product(S, S)) - LEGAL), ids=lambda s: s.value)
def test_every_other_transition_raises(old: S, new: S) -> None:
    with pytest.raises(InvalidJobTransitionError) as caught:
        check_job_transition("j1", old, new)
    assert isinstance(caught.value, InvalidTransitionError)
    assert str(caught.value) == f"job j1: illegal transition {old.value} -> {new.value}"


def test_the_table_covers_every_status_and_terminal_ones_lead_nowhere() -> None:
    assert set(VALID_JOB_TRANSITIONS) == set(S)
    assert {s for s in S if not VALID_JOB_TRANSITIONS[s]} == TERMINAL_JOB_STATUSES


def test_an_outcome_must_be_a_legal_step_from_running() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    JobOutcome("j", "w", 1, S.QUEUED, at)
    with pytest.raises(InvalidJobTransitionError):
        JobOutcome("j", "w", 1, S.RUNNING, at)


def test_payload_round_trip_keeps_the_plan_and_the_working_folder(tmp_path: Path) -> None:
    source = tmp_path / "plan.yaml"
    plan = PLAN.with_source(source)
    text = serialize_job_payload(plan)
    data = json.loads(text)
    assert data["version"] == JOB_PAYLOAD_VERSION
    assert data["workdir"] == str(tmp_path.resolve())
    payload = deserialize_job_payload(text)
    assert payload.plan.model_dump() == PLAN.model_dump()
    assert payload.plan.base_dir == tmp_path.resolve()
    assert payload.plan_source == str(source.resolve())


def test_payload_working_folder_can_be_given(tmp_path: Path) -> None:
    payload = deserialize_job_payload(serialize_job_payload(PLAN, tmp_path))
    assert payload.workdir == str(tmp_path.resolve())
    assert payload.plan.base_dir == tmp_path.resolve()
    assert payload.plan_source is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "job payload version 2 is not supported"),
        (lambda d: d.update(version="1"), "no integer version"),
        (lambda d: d.pop("version"), "no integer version"),
        (lambda d: d.pop("workdir"), "no working folder"),
        (lambda d: d["plan"].update(max_parallel=99), "invalid plan"),
        (lambda d: d["plan"].update(surprise=True), "invalid plan"),
    ],
)
def test_bad_payloads_are_rejected_clearly(mutate: object, message: str) -> None:
    data = json.loads(serialize_job_payload(PLAN, Path("/tmp")))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(JobPayloadError, match=message):
        deserialize_job_payload(json.dumps(data))


def test_unreadable_payloads_are_rejected() -> None:
    with pytest.raises(JobPayloadError, match="not valid JSON"):
        deserialize_job_payload("{nope")
    with pytest.raises(JobPayloadError, match="JSON object"):
        deserialize_job_payload("[1]")


def test_a_new_job_is_queued_with_its_plan() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    job = AsyncJob.new(PLAN, at, workdir=Path("/tmp"), max_attempts=2)
    assert (job.status, job.attempts, job.max_attempts, job.plan_name) == (
        S.QUEUED,
        0,
        2,
        "nightly",
    )
    assert not job.terminal
    assert deserialize_job_payload(job.payload).plan.model_dump() == PLAN.model_dump()

"""The store contract: one suite, run against MemoryStore, SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.domain.events import (
    Event,
    RunStateChanged,
    SubplanAttemptFailed,
    SubplanStateChanged,
)
from engine.domain.lock import LockRecord, Owner, Resource
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.errors import StoreError
from engine.ids import new_id
from engine.ports.store import Changes, LockRelease, NewRun, RunRecord, Store, SubplanRecord

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def a_run(at: datetime = T0, *, resumed_from: str | None = None) -> RunRecord:
    return RunRecord(
        id=new_id(),
        plan_name="release-checks",
        state=RunState.PENDING,
        created_at=at,
        max_parallel=4,
        failure_mode=FailureMode.FAIL_FAST,
        plan_digest="0" * 64,
        plan_source="/work/plan.yaml",
        project="shop",
        resumed_from=resumed_from,
    )


def subplans_of(run: RunRecord, *paths: str) -> list[SubplanRecord]:
    kinds = {p: "group" if any(q.startswith(p + "/") for q in paths) else "run" for p in paths}
    return [
        SubplanRecord(id=new_id(), run_id=run.id, path=p, position=i, kind=kinds[p])
        for i, p in enumerate(paths)
    ]


async def create(store: Store, run: RunRecord, *paths: str, plan: str = '{"name":"x"}') -> None:
    await store.write(Changes(created=[NewRun(run, plan, subplans_of(run, *paths))]))


async def test_a_created_run_reads_back_whole(store: Store) -> None:
    run = a_run()
    await create(store, run, "lint", "matrix", "matrix/py311", plan='{"name":"release"}')

    assert await store.get_run(run.id) == run
    assert await store.get_plan(run.id) == '{"name":"release"}'
    subplans = await store.list_subplans(run.id)
    assert [s.path for s in subplans] == ["lint", "matrix", "matrix/py311"]
    assert [s.kind for s in subplans] == ["run", "group", "run"]
    assert all(s.state is SubplanState.PENDING and s.run_id == run.id for s in subplans)


async def test_updates_change_state_but_never_identity(store: Store) -> None:
    run = a_run()
    await create(store, run, "a", "b")
    first = (await store.list_subplans(run.id))[0]
    finished = RunRecord(
        id=run.id,
        plan_name="renamed",  # fixed at creation: ignored
        state=RunState.FAILED,
        created_at=T0 + timedelta(days=1),  # fixed at creation: ignored
        max_parallel=9,
        failure_mode=FailureMode.CONTINUE_ON_ERROR,
        plan_digest="f" * 64,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=2.5),
        duration=2.5,
        error="1 subplan(s) failed: 'a'",
    )
    sub = replace(
        first,
        id="ignored",
        position=99,
        state=SubplanState.FAILED,
        attempts=3,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
        duration=1.25,
        error="exit code 3\nsecond line",
        output_tail="line 1\nline ✓ 2",
        log_path="/logs/a.log",
    )
    await store.write(Changes(runs=[finished], subplans=[sub]))

    stored = await store.get_run(run.id)
    assert stored == replace(
        run,
        state=RunState.FAILED,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=2.5),
        duration=2.5,
        error="1 subplan(s) failed: 'a'",
    )
    a, b = await store.list_subplans(run.id)
    assert a == replace(sub, id=first.id, position=0)
    assert b.state is SubplanState.PENDING


async def test_events_append_in_seq_order_and_come_back_typed(store: Store) -> None:
    run = a_run()
    await create(store, run, "a")
    events: list[Event] = [
        RunStateChanged(at=T0, seq=1, run_id=run.id, plan="p", to=RunState.RUNNING),
        SubplanStateChanged(
            at=T0,
            seq=2,
            run_id=run.id,
            path="a",
            from_=SubplanState.PENDING,
            to=SubplanState.RUNNING,
        ),
        SubplanAttemptFailed(
            at=T0, seq=3, run_id=run.id, path="a", attempt=1, error="boom", retry_in=0.5
        ),
    ]
    later = SubplanStateChanged(
        at=T0 + timedelta(seconds=1),
        seq=4,
        run_id=run.id,
        path="a",
        from_=SubplanState.RUNNING,
        to=SubplanState.COMPLETED,
        attempt=2,
        duration=1.0,
    )
    # Written out of order across two batches: read back by seq.
    await store.write(Changes(events=[events[2], later]))
    await store.write(Changes(events=events[:2]))

    stored = await store.list_events(run.id)
    assert stored == [*events, later]
    assert [type(e) for e in stored] == [
        RunStateChanged,
        SubplanStateChanged,
        SubplanAttemptFailed,
        SubplanStateChanged,
    ]


async def test_runs_are_listed_newest_first_with_a_limit(store: Store) -> None:
    old = a_run(T0)
    new = a_run(T0 + timedelta(minutes=5))
    middle = a_run(T0 + timedelta(minutes=1))
    for run in (old, new, middle):
        await create(store, run, "a")

    assert [r.id for r in await store.list_runs()] == [new.id, middle.id, old.id]
    assert [r.id for r in await store.list_runs(limit=2)] == [new.id, middle.id]


async def test_times_are_utc_aware_whatever_zone_they_were_given_in(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    run = a_run(datetime(2030, 6, 1, 12, 0, 0, 1, tzinfo=plus_two))
    await create(store, run, "a")

    stored = await store.get_run(run.id)
    assert stored is not None
    assert stored.created_at == datetime(2030, 6, 1, 10, 0, 0, 1, tzinfo=UTC)
    assert stored.created_at.utcoffset() == timedelta(0)


async def test_unknown_ids_read_as_nothing(store: Store) -> None:
    assert await store.get_run("01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert await store.get_plan("01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert await store.list_subplans("01HZZZZZZZZZZZZZZZZZZZZZZZ") == []
    assert await store.list_events("01HZZZZZZZZZZZZZZZZZZZZZZZ") == []
    assert await store.list_runs() == []


async def test_a_resumed_run_links_to_its_origin(store: Store) -> None:
    first = a_run()
    await create(store, first, "a")
    second = a_run(T0 + timedelta(seconds=1), resumed_from=first.id)
    await create(store, second, "a")

    stored = await store.get_run(second.id)
    assert stored is not None
    assert stored.resumed_from == first.id


async def test_a_bad_batch_changes_nothing(store: Store) -> None:
    existing = a_run()
    await create(store, existing, "a")
    fresh = a_run()
    duplicate = NewRun(existing, "{}", subplans_of(existing, "a"))

    with pytest.raises(StoreError):
        await store.write(
            Changes(
                created=[NewRun(fresh, "{}", subplans_of(fresh, "a")), duplicate],
                runs=[replace(existing, state=RunState.RUNNING)],
            )
        )

    assert await store.get_run(fresh.id) is None
    assert (await store.get_run(existing.id)) == existing


@pytest.mark.parametrize(
    "bad",
    ["update of an unknown run", "event of an unknown run", "resume of an unknown run"],
)
async def test_writes_about_unknown_runs_are_refused(store: Store, bad: str) -> None:
    ghost = a_run()
    if bad == "update of an unknown run":
        changes = Changes(runs=[ghost])
    elif bad == "event of an unknown run":
        event = RunStateChanged(at=T0, seq=1, run_id=ghost.id, plan="p", to=RunState.RUNNING)
        changes = Changes(events=[event])
    else:
        orphan = a_run(resumed_from=ghost.id)
        changes = Changes(created=[NewRun(orphan, "{}", [])])
    with pytest.raises(StoreError):
        await store.write(changes)
    assert await store.list_runs() == []


async def test_create_update_and_events_in_one_batch(store: Store) -> None:
    run = a_run()
    subs = subplans_of(run, "a")
    event = RunStateChanged(at=T0, seq=1, run_id=run.id, plan="p", to=RunState.RUNNING)
    await store.write(
        Changes(
            created=[NewRun(run, "{}", subs)],
            runs=[replace(run, state=RunState.RUNNING, started_at=T0)],
            subplans=[replace(subs[0], state=SubplanState.RUNNING, started_at=T0)],
            events=[event],
        )
    )
    stored = await store.get_run(run.id)
    assert stored is not None
    assert stored.state is RunState.RUNNING
    assert (await store.list_subplans(run.id))[0].state is SubplanState.RUNNING
    assert await store.list_events(run.id) == [event]


async def test_a_large_run_round_trips(store: Store) -> None:
    run = a_run()
    paths = [f"g{i}" for i in range(20)] + [f"g{i}/s{j}" for i in range(20) for j in range(50)]
    await create(store, run, *paths)
    done = [
        replace(s, state=SubplanState.COMPLETED, attempts=1, duration=0.001 * s.position)
        for s in await store.list_subplans(run.id)
    ]
    await store.write(Changes(subplans=done))

    stored = await store.list_subplans(run.id)
    assert [s.path for s in stored] == paths
    assert stored == done


async def test_subplans_can_be_added_to_a_created_run(store: Store) -> None:
    run = a_run()
    await create(store, run)
    later = subplans_of(run, "a", "b")
    done = replace(later[1], state=SubplanState.COMPLETED, attempts=1, finished_at=T0)
    await store.write(Changes(added=[later[0], done]))

    assert await store.list_subplans(run.id) == [later[0], done]
    with pytest.raises(StoreError):
        await store.write(Changes(added=[replace(later[0], id=new_id())]))  # path exists
    ghost = a_run()
    with pytest.raises(StoreError):
        await store.write(Changes(added=subplans_of(ghost, "a")))
    assert len(await store.list_subplans(run.id)) == 2


async def test_runs_without_a_live_plan_lock_are_failed_as_lost(store: Store) -> None:
    """A live run holds its unexpired `plan:` lock; one that does not is a dead process's."""
    from engine.ports.store import LOST_RUN_ERROR

    later = T0 + timedelta(minutes=10)
    dead, alive, finished, young = a_run(), a_run(), a_run(), a_run(at=later)
    for run in (dead, alive, finished, young):
        await create(store, run, "g", "g/a", "b")
    running = {
        r.id: replace(r, state=RunState.RUNNING, started_at=r.created_at)
        for r in (dead, alive, young)
    }
    done = replace(finished, state=RunState.COMPLETED, started_at=T0, finished_at=T0, duration=0.0)
    started = replace(subplans_of(dead, "g", "g/a", "b")[0], state=SubplanState.RUNNING)
    await store.write(Changes(runs=[*running.values(), done]))
    await store.write(Changes(subplans=[replace(started, id="ignored")]))
    owner = Owner.of_run(alive.id)
    await store.acquire_lock(LockRecord.claim(Resource.of("plan:alive"), owner, later, 600))
    expired = Owner.of_run(dead.id)
    await store.acquire_lock(LockRecord.claim(Resource.of("plan:dead"), expired, T0, 60))

    now = later + timedelta(seconds=1)
    lost = await store.abandon_lost_runs(now, created_before=later)

    assert lost == [dead.id]
    record = await store.get_run(dead.id)
    assert record is not None
    assert (record.state, record.error, record.finished_at) == (
        RunState.FAILED,
        LOST_RUN_ERROR,
        now,
    )
    assert {s.path: s.state for s in await store.list_subplans(dead.id)} == {
        "g": SubplanState.CANCELLED,
        "g/a": SubplanState.CANCELLED,
        "b": SubplanState.CANCELLED,
    }
    for kept in (alive, young):
        assert (await store.get_run(kept.id)).state is RunState.RUNNING  # type: ignore[union-attr]
    assert (await store.get_run(finished.id)).state is RunState.COMPLETED  # type: ignore[union-attr]
    assert await store.abandon_lost_runs(now, created_before=later) == []
    for name in ("alive", "dead"):  # the PostgreSQL database is shared with later tests
        await store.delete_lock(Resource.of(f"plan:{name}"))


async def test_a_batch_releases_locks_with_the_run_it_records(store: Store) -> None:
    """A run's locks go in the transaction that records its end: each release says whether it
    was written and the depth left (None: not held by that owner)."""
    run = a_run()
    await create(store, run, "a")
    owner, other = Owner.of_run(run.id), Owner.of_run(new_id())
    plan, project, theirs = (
        Resource.of(f"plan:rel-{run.id[-8:]}"),
        Resource.of(f"project:rel-{run.id[-8:]}"),
        Resource.of(f"resource:rel-{run.id[-8:]}"),
    )
    await store.acquire_lock(LockRecord.claim(plan, owner, T0, 600))
    for _ in range(2):  # re-entered: one release counts it down
        await store.acquire_lock(LockRecord.claim(project, owner, T0, 600))
    await store.acquire_lock(LockRecord.claim(theirs, other, T0, 600))
    releases = [LockRelease(r, owner.id) for r in (plan, project, theirs)]
    ended = replace(run, state=RunState.COMPLETED, started_at=T0, finished_at=T0, duration=0.0)

    await store.write(Changes(runs=[ended], releases=releases))

    assert (await store.get_run(run.id)).state is RunState.COMPLETED  # type: ignore[union-attr]
    assert [(r.written, r.left) for r in releases] == [(True, 0), (True, 1), (True, None)]
    assert await store.get_lock(plan) is None
    assert (await store.get_lock(project)).depth == 1  # type: ignore[union-attr]
    assert (await store.get_lock(theirs)).owner_id == other.id  # type: ignore[union-attr]
    for resource in (project, theirs):  # the PostgreSQL database is shared with later tests
        await store.delete_lock(resource)


async def test_a_bad_batch_releases_no_lock(store: Store) -> None:
    existing = a_run()
    await create(store, existing, "a")
    owner = Owner.of_run(existing.id)
    plan = Resource.of(f"plan:bad-{existing.id[-8:]}")
    await store.acquire_lock(LockRecord.claim(plan, owner, T0, 600))
    release = LockRelease(plan, owner.id)

    with pytest.raises(StoreError):
        await store.write(
            Changes(
                created=[NewRun(existing, "{}", subplans_of(existing, "a"))], releases=[release]
            )
        )

    assert (release.written, release.left) == (False, None)
    assert (await store.get_lock(plan)).owner_id == owner.id  # type: ignore[union-attr]
    await store.delete_lock(plan)


async def test_a_new_run_its_events_and_its_lock_release_in_one_batch(store: Store) -> None:
    """The worker's usual batch (inserts and releases only: one statement on PostgreSQL)."""
    run = replace(a_run(), state=RunState.COMPLETED, started_at=T0, finished_at=T0, duration=0.0)
    owner = Owner.of_run(run.id)
    plan = Resource.of(f"plan:one-{run.id[-8:]}")
    await store.acquire_lock(LockRecord.claim(plan, owner, T0, 600))
    event = RunStateChanged(at=T0, seq=1, run_id=run.id, plan="p", to=RunState.RUNNING)
    released = [LockRelease(plan, owner.id), LockRelease(plan, "someone-else")]

    await store.write(
        Changes(
            created=[NewRun(run, "{}", subplans_of(run, "g", "g/a"))],
            events=[event],
            releases=released,
        )
    )

    assert await store.get_run(run.id) == run
    assert [s.path for s in await store.list_subplans(run.id)] == ["g", "g/a"]
    assert await store.list_events(run.id) == [event]
    assert [(r.written, r.left) for r in released] == [(True, 0), (True, None)]
    assert await store.get_lock(plan) is None

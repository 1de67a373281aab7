"""The lock part of the store port: one suite, run against MemoryStore, SQLite and PostgreSQL,
plus real contention on the SQL stores (many connections racing for one resource)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from engine.domain.lock import LockKind, LockRecord, Owner, Resource
from engine.ports.store import Store
from engine.store import open_store

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
DB = Resource(LockKind.RESOURCE, "db")
PLAN = Resource(LockKind.PLAN, "nightly")
A = Owner("run-a", "host-a", 11, "01JA0000000000000000000000")
B = Owner("run-b/matrix/py311", "host-b", 22, "01JB0000000000000000000000")


def claim(owner: Owner, resource: Resource = DB, at: datetime = T0, ttl: float = 10) -> LockRecord:
    return LockRecord.claim(resource, owner, at, ttl)


async def test_a_free_resource_is_taken_and_reads_back_whole(store: Store) -> None:
    taken = await store.acquire_lock(claim(B))
    assert taken == LockRecord(
        resource=DB,
        owner_id=B.id,
        acquired_at=T0,
        expires_at=T0 + timedelta(seconds=10),
        depth=1,
        host="host-b",
        pid=22,
        run_id=B.run_id,
    )
    assert await store.get_lock(DB) == taken
    assert await store.list_locks() == [taken]
    assert taken.acquired_at.tzinfo is UTC


async def test_times_in_other_zones_come_back_in_utc(store: Store) -> None:
    east = timezone(timedelta(hours=5))
    taken = await store.acquire_lock(claim(A, at=T0.astimezone(east)))
    assert taken is not None
    stored = await store.get_lock(DB)
    assert stored is not None
    assert stored.acquired_at == T0
    assert stored.acquired_at.tzinfo is UTC


async def test_another_owner_is_refused_until_the_lock_expires(store: Store) -> None:
    first = await store.acquire_lock(claim(A))
    assert await store.acquire_lock(claim(B, at=T0 + timedelta(seconds=9.999))) is None
    assert await store.get_lock(DB) == first

    taken = await store.acquire_lock(claim(B, at=T0 + timedelta(seconds=10)))
    assert taken is not None
    assert (taken.owner_id, taken.depth, taken.acquired_at) == (B.id, 1, T0 + timedelta(seconds=10))
    assert (taken.host, taken.pid, taken.run_id) == ("host-b", 22, B.run_id)


async def test_the_same_owner_re_enters_keeping_the_later_expiry(store: Store) -> None:
    await store.acquire_lock(claim(A, ttl=10))
    again = await store.acquire_lock(claim(A, at=T0 + timedelta(seconds=1), ttl=2))
    assert again is not None
    assert (again.depth, again.acquired_at, again.expires_at) == (
        2,
        T0,
        T0 + timedelta(seconds=10),
    )
    longer = await store.acquire_lock(claim(A, at=T0 + timedelta(seconds=2), ttl=30))
    assert longer is not None
    assert (longer.depth, longer.expires_at) == (3, T0 + timedelta(seconds=32))


async def test_an_owner_whose_lock_expired_starts_afresh(store: Store) -> None:
    await store.acquire_lock(claim(A))
    await store.acquire_lock(claim(A))
    later = T0 + timedelta(seconds=20)
    again = await store.acquire_lock(claim(A, at=later))
    assert again is not None
    assert (again.depth, again.acquired_at) == (1, later)


async def test_release_undoes_one_acquire_and_only_for_the_holder(store: Store) -> None:
    await store.acquire_lock(claim(A))
    await store.acquire_lock(claim(A))
    assert await store.release_lock(DB, B.id) is None
    assert await store.release_lock(DB, A.id) == 1
    assert (await store.get_lock(DB)) is not None
    assert await store.release_lock(DB, A.id) == 0
    assert await store.get_lock(DB) is None
    assert await store.release_lock(DB, A.id) is None


async def test_an_expired_lock_can_still_be_released_by_its_owner(store: Store) -> None:
    await store.acquire_lock(claim(A, ttl=1))
    assert await store.release_lock(DB, A.id) == 0


async def test_renew_moves_the_expiry_only_for_the_unexpired_holder(store: Store) -> None:
    await store.acquire_lock(claim(A, ttl=10))
    at = T0 + timedelta(seconds=5)
    renewed = await store.renew_lock(DB, A.id, at, at + timedelta(seconds=10))
    assert renewed is not None
    assert (renewed.expires_at, renewed.acquired_at, renewed.depth) == (
        T0 + timedelta(seconds=15),
        T0,
        1,
    )
    assert await store.renew_lock(DB, B.id, at, at + timedelta(seconds=10)) is None
    late = T0 + timedelta(seconds=15)
    assert await store.renew_lock(DB, A.id, late, late + timedelta(seconds=10)) is None
    assert await store.renew_lock(PLAN, A.id, at, late) is None


async def test_purge_count_list_and_force_delete(store: Store) -> None:
    await store.acquire_lock(claim(A, resource=PLAN, ttl=5))
    await store.acquire_lock(claim(B, resource=DB, ttl=50))
    project = Resource(LockKind.PROJECT, "shop")
    await store.acquire_lock(claim(A, resource=project, ttl=500))
    assert [lock.resource for lock in await store.list_locks()] == [PLAN, project, DB]

    at = T0 + timedelta(seconds=60)
    assert await store.count_expired_locks(at) == 2
    assert await store.count_expired_locks(T0) == 0
    assert await store.delete_expired_locks(at) == [PLAN, DB]
    assert await store.count_expired_locks(at) == 0
    assert [lock.resource for lock in await store.list_locks()] == [project]

    removed = await store.delete_lock(project)
    assert removed is not None
    assert removed.owner_id == A.id
    assert await store.delete_lock(project) is None


async def test_release_locks_of_an_owner_removes_all_of_them(store: Store) -> None:
    await store.acquire_lock(claim(A, resource=PLAN))
    await store.acquire_lock(claim(A, resource=DB))
    await store.acquire_lock(claim(A, resource=DB))
    other = Resource(LockKind.RESOURCE, "cache")
    await store.acquire_lock(claim(B, resource=other))
    assert await store.release_locks_of(A.id) == [PLAN, DB]
    assert [lock.resource for lock in await store.list_locks()] == [other]
    assert await store.release_locks_of(A.id) == []


async def test_releases_made_together_are_each_answered_on_their_own(store: Store) -> None:
    """Concurrent releases of different locks (one batch on the SQL stores): one frees its lock,
    one counts it down, one finds it not held."""
    cache = Resource(LockKind.RESOURCE, "cache")
    await store.acquire_lock(claim(A, resource=PLAN))
    await store.acquire_lock(claim(A, resource=DB))
    await store.acquire_lock(claim(A, resource=DB))
    answers: dict[Resource, int | None] = {}

    async def release(resource: Resource) -> None:
        answers[resource] = await store.release_lock(resource, A.id)

    async with anyio.create_task_group() as tg:
        for resource in (PLAN, DB, cache):
            tg.start_soon(release, resource)
    assert answers == {PLAN: 0, DB: 1, cache: None}
    assert [lock.resource for lock in await store.list_locks()] == [DB]


async def test_a_caller_cancelled_during_an_acquire_still_gets_its_answer(store: Store) -> None:
    """The port's promise, which `LockService` relies on instead of shielding the call: a lock
    taken for a caller cancelled meanwhile is answered, not held unknown until its TTL."""
    answers: list[LockRecord | None] = []
    scope = anyio.CancelScope()

    async def take() -> None:
        with scope:
            answers.append(await store.acquire_lock(claim(A)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.lowlevel.checkpoint()  # `take` is in the call now (where it awaits, if it does)
        scope.cancel()
    assert len(answers) == 1
    assert answers[0] is not None
    assert answers[0] == await store.get_lock(DB)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'race.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_racing_acquirers_on_separate_connections_never_both_win(sql_url: str) -> None:
    """Four stores (four engines, as four processes would have) race 25 rounds each for one
    resource, taking over each other's expired locks: every round has exactly one winner."""
    stores = [await open_store(sql_url) for _ in range(4)]
    resource = Resource(LockKind.RESOURCE, "race")
    owners = [Owner(f"racer-{i}", "host", i) for i in range(4)]
    try:
        for store in stores[:1]:
            await store.delete_lock(resource)
        for round_ in range(25):
            at = T0 + timedelta(seconds=10 * round_)  # the previous round's lock has expired
            winners: list[str] = []

            async def race(
                store: Store, owner: Owner, at: datetime = at, winners: list[str] = winners
            ) -> None:
                got = await store.acquire_lock(claim(owner, resource, at=at, ttl=10))
                if got is not None:
                    assert got.owner_id == owner.id
                    winners.append(owner.id)

            async with anyio.create_task_group() as tg:
                for store, owner in zip(stores, owners, strict=True):
                    tg.start_soon(race, store, owner)
            assert len(winners) == 1, winners
            held = await stores[0].get_lock(resource)
            assert held is not None
            assert held.owner_id == winners[0]
    finally:
        await stores[0].delete_lock(resource)
        for store in stores:
            await store.close()

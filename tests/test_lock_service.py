"""`LockService` on every store, with time under the test's control (`ManualClock`): conflicts
naming the holder, waiting with backoff, expiry and take-over, renewal by `hold`, a lost lock
cancelling the block, release on every way out."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import pytest

from engine import LockConflictError, LockExpiredError, LockNotFoundError, LockService, Owner
from engine.domain.lock import LockKind, Resource
from engine.locks import Backoff
from engine.ports.store import Store
from engine.testing import ManualClock

A = Owner("01JA0000000000000000000000", "host-a", 11, "01JA0000000000000000000000")
B = Owner("01JB0000000000000000000000/deploy", "host-b", 22, "01JB0000000000000000000000")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@asynccontextmanager
async def ticking(clock: ManualClock, step: float) -> AsyncIterator[None]:
    """Move the clock by `step` each time something sleeps on it, while the block runs."""

    async def tick() -> None:
        while True:
            await clock.wait_for_sleepers(1)
            clock.advance(step)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def locks(store: Store, clock: ManualClock) -> LockService:
    return LockService(store, clock, rng=random.Random(4))


async def test_conflict_names_resource_holder_and_expiry(locks: LockService) -> None:
    await locks.acquire("plan:nightly", A, 300)
    with pytest.raises(LockConflictError) as caught:
        await locks.acquire("plan:nightly", B, 300)
    error = caught.value
    assert (error.resource, error.holder, error.exit_code) == ("plan:nightly", A.id, 3)
    assert error.expires_at == locks.clock.now() + timedelta(seconds=300)
    assert "plan:nightly is locked by host-a:11:01JA" in str(error)
    assert "2030-01-01 00:05:00 UTC" in str(error)
    assert locks.statistics().conflicts == 1


async def test_re_entrant_for_one_owner_and_released_at_depth_zero(locks: LockService) -> None:
    await locks.acquire("resource:db", A, 10)
    again = await locks.acquire("resource:db", A, 10)
    assert again.depth == 2
    assert await locks.release("resource:db", A)
    assert await locks.is_locked("resource:db")
    assert await locks.release("resource:db", A)
    assert not await locks.is_locked("resource:db")
    assert not await locks.release("resource:db", A)
    stats = locks.statistics()
    assert (stats.acquired, stats.reentered, stats.released) == (2, 1, 2)


async def test_expiry_through_the_clock_lets_another_owner_take_over(
    locks: LockService, clock: ManualClock
) -> None:
    await locks.acquire("plan:nightly", A, 30)
    clock.advance(29.9)
    assert await locks.is_locked("plan:nightly")
    clock.advance(0.1)
    assert not await locks.is_locked("plan:nightly")
    assert await locks.count_stale() == 1
    taken = await locks.acquire("plan:nightly", B, 30)
    assert taken.owner_id == B.id
    with pytest.raises(LockExpiredError, match="taken over by host-b:22") as caught:
        await locks.renew("plan:nightly", A, 30)
    assert caught.value.holder == A.id
    assert caught.value.taken_by == B.id


async def test_renew_of_an_expired_lock_raises_with_when_it_expired(
    locks: LockService, clock: ManualClock
) -> None:
    await locks.acquire("resource:db", A, 5)
    clock.advance(4)
    renewed = await locks.renew("resource:db", A, 5)
    assert renewed.expires_at == clock.now() + timedelta(seconds=5)
    clock.advance(5)
    with pytest.raises(LockExpiredError, match="was lost: it expired") as caught:
        await locks.renew("resource:db", A, 5)
    assert caught.value.expires_at == renewed.expires_at


async def test_cleanup_purges_only_expired_locks(locks: LockService, clock: ManualClock) -> None:
    await locks.acquire("plan:a", A, 5)
    await locks.acquire("plan:b", A, 50)
    clock.advance(10)
    assert await locks.count_stale() == 1
    assert await locks.cleanup_expired() == 1
    assert await locks.count_stale() == 0
    assert [str(lock.resource) for lock in await locks.list()] == ["plan:b"]


async def test_release_all_for_owner_and_force_release(locks: LockService) -> None:
    await locks.acquire("plan:a", A, 50)
    await locks.acquire("resource:db", A, 50)
    await locks.acquire("resource:cache", B, 50)
    released = await locks.release_all_for_owner(A)
    assert [str(r) for r in released] == ["plan:a", "resource:db"]
    removed = await locks.force_release("resource:cache")
    assert removed.owner_id == B.id
    with pytest.raises(LockNotFoundError, match="nobody holds resource:cache") as caught:
        await locks.force_release("resource:cache")
    assert caught.value.exit_code == 2


async def test_bad_resources_and_ttls_are_refused(locks: LockService) -> None:
    with pytest.raises(ValueError, match="unknown lock resource 'table:x'"):
        await locks.acquire("table:x", A, 5)
    with pytest.raises(ValueError, match="use letters, digits"):
        await locks.acquire("plan:no spaces", A, 5)
    with pytest.raises(ValueError, match="ttl"):
        await locks.acquire("plan:x", A, 0)


async def test_wait_proceeds_the_moment_the_holder_releases(
    locks: LockService, clock: ManualClock
) -> None:
    await locks.acquire("plan:nightly", A, 300)
    got: list[str] = []

    async def waiter() -> None:
        record = await locks.acquire("plan:nightly", B, 300, wait=60)
        got.append(record.owner_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await clock.wait_for_sleepers(1)  # the waiter is backing off
        assert locks.statistics().waited == 1
        await locks.release("plan:nightly", A)  # no clock movement needed: it is woken
    assert got == [B.id]


async def test_wait_proceeds_when_the_holder_expires(
    locks: LockService, clock: ManualClock
) -> None:
    await locks.acquire("plan:nightly", A, 3)
    async with ticking(clock, 0.5):
        got = await locks.acquire("plan:nightly", B, 3, wait=60)
    assert got.owner_id == B.id
    assert clock.monotonic() == pytest.approx(3.0)  # not a moment after the expiry
    attempts = locks.statistics().attempts
    assert attempts <= 10, attempts  # backed off, did not hammer the store


async def test_wait_gives_up_with_a_conflict_after_the_wait(
    locks: LockService, clock: ManualClock
) -> None:
    await locks.acquire("plan:nightly", A, 300)
    async with ticking(clock, 0.5):
        with pytest.raises(LockConflictError) as caught:
            await locks.acquire("plan:nightly", B, 300, wait=5)
    assert caught.value.waited == pytest.approx(5.0)
    assert "still locked after waiting 5s" in str(caught.value)


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    rng = random.Random(1)
    backoff = Backoff(initial=0.05, maximum=1.0)
    delays = [backoff.delay(n, rng) for n in range(10)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(0.5 <= d <= 1.0 for d in delays[5:])
    assert len(set(delays)) == len(delays)


async def test_hold_renews_every_third_of_the_ttl_past_several_ttls(
    locks: LockService, clock: ManualClock
) -> None:
    async with locks.hold("plan:long", A, 3) as held:
        for _ in range(12):  # 12 s: four TTLs
            await clock.wait_for_sleepers(1)
            clock.advance(1)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(LockConflictError):
                await locks.acquire("plan:long", B, 3)
        assert locks.statistics().renewed >= 11
        assert held.record.expires_at > clock.now()
    assert not await locks.is_locked("plan:long")


async def test_hold_releases_on_error_and_on_cancellation(locks: LockService) -> None:
    with pytest.raises(KeyError):
        async with locks.hold("resource:db", A, 10):
            raise KeyError("boom")
    assert not await locks.is_locked("resource:db")

    with anyio.CancelScope() as scope:
        async with locks.hold("resource:db", A, 10):
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not await locks.is_locked("resource:db")
    assert locks.statistics().held == 0


async def test_a_lost_lock_cancels_the_block_and_raises(
    locks: LockService, clock: ManualClock
) -> None:
    reached: list[str] = []
    with pytest.raises(LockExpiredError) as caught:  # noqa: PT012 - the block is the subject
        async with locks.hold("resource:db", A, 3):
            await locks.force_release("resource:db")
            await locks.acquire("resource:db", B, 30)  # another owner takes it meanwhile
            await clock.wait_for_sleepers(1)
            clock.advance(1)  # the renewal is due: it finds the lock taken over
            await anyio.sleep_forever()
            reached.append("unprotected")
    assert str(caught.value).startswith(f"lock resource:db of {A.id} was lost: taken over by")
    assert reached == []
    assert locks.statistics().lost == 1
    held = await locks.get("resource:db")
    assert held is not None
    assert held.owner_id == B.id  # the loser's release did not touch the new holder's lock


async def test_hold_all_takes_locks_in_order_and_shares_one_wait(locks: LockService) -> None:
    claims: list[tuple[Resource | str, float]] = [
        ("resource:b", 10),
        (Resource(LockKind.PLAN, "x"), 10),
        ("resource:a", 10),
    ]
    async with locks.hold_all(claims, A) as guard:
        assert [str(h.resource) for h in guard.locks] == ["plan:x", "resource:a", "resource:b"]
        assert guard.lost is None
        assert len(await locks.list()) == 3
    assert await locks.list() == []


async def test_the_services_renewer_renews_every_hold_and_stops_them_when_it_stops(
    locks: LockService, clock: ManualClock
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(locks.renewer.run)
        with pytest.raises(LockExpiredError, match="its renewer stopped"):  # noqa: PT012
            async with locks.hold("plan:a", A, 3) as a, locks.hold("resource:b", B, 6) as b:
                for _ in range(6):  # two TTLs of a, one of b
                    await clock.wait_for_sleepers(1)
                    assert clock.sleepers == 1  # the renewer, for both locks: no task per hold
                    clock.advance(1)
                    await anyio.wait_all_tasks_blocked()
                assert a.record.expires_at > clock.now()
                assert b.record.expires_at > clock.now()
                locks.renewer.stop()  # nothing renews them now: their blocks are stopped
                await anyio.sleep_forever()
    assert not locks.renewer.running
    assert locks.statistics().renewed >= 7
    assert locks.statistics().lost == 2
    assert await locks.list() == []
    async with locks.hold("plan:a", A, 3):  # without a renewer, a hold renews its own lock
        await clock.wait_for_sleepers(1)
        clock.advance(1)
        await anyio.wait_all_tasks_blocked()
    assert locks.statistics().renewed >= 8

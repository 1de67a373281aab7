"""A model check of `LockService` on every store: random sequences of acquire, release, renew,
time passing and purges agree with a plain reference model, and at no moment do two owners
believe they hold the same resource. Deterministic (derandomized), modest example counts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import LockConflictError, LockExpiredError, LockService, Owner
from engine.domain.lock import Resource
from engine.store import open_store, upgrade
from engine.testing import ManualClock

OWNERS = [Owner(f"run-{i}", "host", 100 + i) for i in range(3)]
RESOURCES = ["resource:x", "plan:y"]
TTLS = [1.0, 2.5, 5.0]

owner_ = st.integers(0, len(OWNERS) - 1)
resource_ = st.sampled_from(RESOURCES)
ttl_ = st.sampled_from(TTLS)
operation = st.one_of(
    st.tuples(st.just("acquire"), owner_, resource_, ttl_),
    st.tuples(st.just("release"), owner_, resource_),
    st.tuples(st.just("renew"), owner_, resource_, ttl_),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.5])),
    st.tuples(st.just("cleanup")),
)
scenarios = st.lists(operation, min_size=1, max_size=30)
check = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass
class Held:
    owner: int
    expires_at: datetime
    depth: int


@dataclass
class Model:
    """The reference: what the store should hold, computed the obvious way."""

    now: datetime
    held: dict[str, Held] = field(default_factory=dict)

    def live(self, resource: str) -> Held | None:
        held = self.held.get(resource)
        return held if held is not None and held.expires_at > self.now else None


async def play(locks: LockService, clock: ManualClock, ops: list[tuple[Any, ...]]) -> None:
    model = Model(clock.now())
    # What each owner believes from the answers it got: resource -> expiry of its lock.
    beliefs: list[dict[str, datetime]] = [{} for _ in OWNERS]
    for op in ops:
        kind = op[0]
        if kind == "acquire":
            _, o, resource, ttl = op
            expires = model.now + timedelta(seconds=ttl)
            held = model.held.get(resource)
            if held is None or held.expires_at <= model.now:
                model.held[resource] = Held(o, expires, 1)
            elif held.owner == o:
                held.depth += 1
                held.expires_at = max(held.expires_at, expires)
            else:
                with pytest.raises(LockConflictError):
                    await locks.acquire(resource, OWNERS[o], ttl)
                continue
            record = await locks.acquire(resource, OWNERS[o], ttl)
            assert (record.depth, record.expires_at) == (
                model.held[resource].depth,
                model.held[resource].expires_at,
            )
            beliefs[o][resource] = record.expires_at
        elif kind == "release":
            _, o, resource = op
            held = model.held.get(resource)
            mine = held is not None and held.owner == o
            assert await locks.release(resource, OWNERS[o]) is mine
            if held is not None and mine:
                held.depth -= 1
                if held.depth == 0:
                    del model.held[resource]
                    beliefs[o].pop(resource, None)
        elif kind == "renew":
            _, o, resource, ttl = op
            live = model.live(resource)
            if live is not None and live.owner == o:
                record = await locks.renew(resource, OWNERS[o], ttl)
                live.expires_at = model.now + timedelta(seconds=ttl)
                assert record.expires_at == live.expires_at
                beliefs[o][resource] = record.expires_at
            else:
                with pytest.raises(LockExpiredError):
                    await locks.renew(resource, OWNERS[o], ttl)
                beliefs[o].pop(resource, None)
        elif kind == "advance":
            clock.advance(op[1])
            model.now = clock.now()
        else:
            expired = [r for r, h in model.held.items() if h.expires_at <= model.now]
            assert await locks.cleanup_expired() == len(expired)
            for resource in expired:
                del model.held[resource]

        for resource in RESOURCES:
            believers = [o for o, b in enumerate(beliefs) if b.get(resource, model.now) > model.now]
            assert len(believers) <= 1, (resource, believers)  # never two owners at once
            live = model.live(resource)
            assert await locks.is_locked(resource) is (live is not None)
            stored = await locks.get(resource)
            if live is not None:
                assert stored is not None
                assert (stored.owner_id, stored.depth) == (OWNERS[live.owner].id, live.depth)
                assert believers in ([], [live.owner])
        stale = sum(1 for h in model.held.values() if h.expires_at <= model.now)
        assert await locks.count_stale() == stale


async def scenario(url: str, ops: list[tuple[Any, ...]]) -> None:
    store = await open_store(url)
    try:
        for resource in RESOURCES:
            await store.delete_lock(Resource.parse(resource))
        clock = ManualClock()
        await play(LockService(store, clock), clock, ops)
    finally:
        for resource in RESOURCES:
            await store.delete_lock(Resource.parse(resource))
        await store.close()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('model') / 'locks.db'}"
        asyncio.run(upgrade(url))  # once: every example then opens a file at head
        return url
    postgres: str = request.getfixturevalue("postgres_url")
    return postgres


@check
@given(ops=scenarios)
def test_locks_agree_with_the_reference_model(
    database_url: str, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(scenario(database_url, ops))


def test_the_model_check_finds_a_broken_store(tmp_path: Path) -> None:
    """The check has teeth: a store that lets anyone take any lock fails it."""
    from engine.store import MemoryStore

    class Careless(MemoryStore):
        async def acquire_lock(self, claim: Any) -> Any:
            self._locks[claim.resource] = claim
            return claim

    async def broken() -> None:
        clock = ManualClock()
        ops = [("acquire", 0, "resource:x", 5.0), ("acquire", 1, "resource:x", 5.0)]
        await play(LockService(Careless(), clock), clock, ops)

    with pytest.raises(BaseException, match="DID NOT RAISE"):
        asyncio.run(broken())

"""`GroupCommit`: concurrent requests are made together, one per key per batch, each answered."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from engine.domain.lock import LockRecord, Owner, Resource
from engine.ports.store import Store
from engine.store.sql.batch import GroupCommit

pytestmark = pytest.mark.timeout(20)

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class Recording:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = anyio.Event()

    async def run(self, requests: list[str]) -> list[str]:
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            await self.gate.wait()  # hold the first batch so that others queue behind it
        if "boom" in requests:
            raise RuntimeError("the statement failed")
        return [r.upper() for r in requests]


async def test_requests_queued_behind_a_batch_go_together_one_per_key() -> None:
    rec = Recording()
    batcher: GroupCommit[str, str] = GroupCommit(rec.run, key=lambda r: r[0])
    answers: dict[str, str] = {}

    async def ask(request: str) -> None:
        answers[request] = await batcher.submit(request)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "a1")
        await anyio.wait_all_tasks_blocked()
        for request in ("b1", "c1", "b2"):
            tg.start_soon(ask, request)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()

    assert rec.batches == [["a1"], ["b1", "c1"], ["b2"]]
    assert answers == {"a1": "A1", "b1": "B1", "c1": "C1", "b2": "B2"}
    assert (batcher.batches, batcher.requests) == (3, 4)


async def test_requests_made_at_the_same_moment_form_one_batch() -> None:
    rec = Recording()
    rec.gate.set()
    batcher: GroupCommit[str, str] = GroupCommit(rec.run, key=lambda r: r)
    async with anyio.create_task_group() as tg:
        for request in ("a", "b", "c"):
            tg.start_soon(batcher.submit, request)
    assert rec.batches == [["a", "b", "c"]]


async def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_still_runs() -> None:
    rec = Recording()
    batcher: GroupCommit[str, str] = GroupCommit(rec.run, key=lambda r: r)
    outcomes: dict[str, str] = {}

    async def ask(request: str) -> None:
        try:
            outcomes[request] = await batcher.submit(request)
        except RuntimeError as exc:
            outcomes[request] = str(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "first")
        await anyio.wait_all_tasks_blocked()
        for request in ("boom", "x"):
            tg.start_soon(ask, request)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()

    assert rec.batches == [["first"], ["boom", "x"]]
    assert outcomes == {
        "first": "FIRST",
        "boom": "the statement failed",
        "x": "the statement failed",
    }
    assert await batcher.submit("later") == "LATER"


async def test_a_cancelled_caller_still_gets_its_request_made() -> None:
    rec = Recording()
    batcher: GroupCommit[str, str] = GroupCommit(rec.run, key=lambda r: r)
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.submit, "a")
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as scope:
            scope.cancel()
            tg.start_soon(batcher.submit, "b")
            await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert rec.batches == [["a"], ["b"]]


async def test_concurrent_acquires_of_one_lock_have_one_winner(store: Store) -> None:
    """Many owners at once (batched together where the store batches): exactly one holder."""
    resource = Resource.of("plan:contended")
    owners = [Owner.of_run(f"run-{i}") for i in range(12)]
    won: list[LockRecord] = []

    async def take(owner: Owner) -> None:
        record = await store.acquire_lock(LockRecord.claim(resource, owner, T0, 60))
        if record is not None:
            won.append(record)

    async with anyio.create_task_group() as tg:
        for owner in owners:
            tg.start_soon(take, owner)
    assert len(won) == 1
    held = await store.get_lock(resource)
    assert held is not None
    assert held.owner_id == won[0].owner_id

    async def release(owner: Owner) -> int | None:
        return await store.release_lock(resource, owner.id)

    results: dict[str, int | None] = {}

    async def release_into(owner: Owner) -> None:
        results[owner.id] = await release(owner)

    async with anyio.create_task_group() as tg:
        for owner in owners:
            tg.start_soon(release_into, owner)
    assert [results[o.id] for o in owners if o.id == won[0].owner_id] == [0]
    assert all(v is None for k, v in results.items() if k != won[0].owner_id)
    assert await store.get_lock(resource) is None

"""`locks list` and `locks release RESOURCE --force`: the TTL locks in the configured store.

Both open the engine without purging expired locks, so `locks list` shows what a crashed holder
left behind (marked expired) until something takes it over or purges it. Times are UTC.
"""

from __future__ import annotations

import argparse
import json

from engine.app import Engine, database_url_for
from engine.cli.run import settings_from
from engine.cli.runs import _table as table
from engine.cli.runs import fmt_time
from engine.domain.lock import LockRecord, Resource
from engine.errors import InputError


def _engine(args: argparse.Namespace) -> Engine:
    settings = settings_from(args)
    return Engine(settings, database_url=database_url_for(settings), purge_expired_locks=False)


async def list_locks(args: argparse.Namespace) -> int:
    async with _engine(args) as eng:
        held = await eng.locks.list()
        now = eng.clock.now()
        location = eng.store.location
    if args.json:
        print(json.dumps([_jsonable(lock, expired=lock.expired(now)) for lock in held], indent=2))
        return 0
    if not held:
        print(f"no locks held in {location}")
        return 0
    rows = [
        [
            str(lock.resource),
            lock.owner_id,
            fmt_time(lock.acquired_at),
            fmt_time(lock.expires_at) + (" (expired)" if lock.expired(now) else ""),
            str(lock.depth),
        ]
        for lock in held
    ]
    header = ["RESOURCE", "OWNER", "ACQUIRED (UTC)", "EXPIRES (UTC)", "DEPTH"]
    print(table(header, rows, right={4}))
    return 0


async def release_lock(args: argparse.Namespace) -> int:
    try:
        resource = Resource.parse(args.resource)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not args.force:
        raise InputError(
            f"locks release {resource}: its holder is not asked and may still be working; "
            "repeat with --force if it is gone"
        )
    async with _engine(args) as eng:
        removed = await eng.locks.force_release(resource)
        expired = removed.expired(eng.clock.now())
    state = "expired" if expired else f"valid until {fmt_time(removed.expires_at)} UTC"
    print(f"released {resource} (held by {removed.owner_id}, {state})")
    return 0


def _jsonable(lock: LockRecord, *, expired: bool) -> dict[str, object]:
    return {
        "resource": str(lock.resource),
        "owner": lock.owner_id,
        "acquired_at": lock.acquired_at.isoformat(),
        "expires_at": lock.expires_at.isoformat(),
        "depth": lock.depth,
        "host": lock.host,
        "pid": lock.pid,
        "run_id": lock.run_id,
        "expired": expired,
    }

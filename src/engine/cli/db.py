"""`db upgrade` and `db current`: the schema of the configured database.

The embedded SQLite file is upgraded automatically whenever it is opened; a PostgreSQL database
is upgraded only here, once per engine release, by whoever administers it.
"""

from __future__ import annotations

import argparse

from engine.app import database_url_for
from engine.cli.run import settings_from
from engine.store import schema_status, upgrade


async def db_upgrade(args: argparse.Namespace) -> int:
    url = database_url_for(settings_from(args))
    before, after = await upgrade(url, args.revision)
    status = await schema_status(url)
    if before == after:
        print(f"{status.location}: already at revision {after}{_head_note(after, status.head)}")
    else:
        print(f"{status.location}: upgraded from {before or 'an empty database'} to {after}")
    return 0


async def db_current(args: argparse.Namespace) -> int:
    status = await schema_status(database_url_for(settings_from(args)))
    if not status.exists:
        print(f"{status.location}: no database file yet (created on first use)")
    elif status.current is None:
        print(
            f"{status.location}: no engine schema; run `python -m engine db upgrade` "
            f"(this engine needs revision {status.head})"
        )
    elif not status.known:
        print(
            f"{status.location}: revision {status.current}, newer than this engine "
            f"(it knows up to {status.head}): upgrade the engine"
        )
    else:
        note = _head_note(status.current, status.head)
        print(f"{status.location}: revision {status.current}{note}")
    return 0


def _head_note(current: str | None, head: str) -> str:
    if current == head:
        return " (head)"
    return f" (this engine needs {head}: run `python -m engine db upgrade`)"

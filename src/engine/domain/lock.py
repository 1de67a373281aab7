"""What a lock is: the resource it guards, who holds it, and the row a store keeps for it.

Pure values, no I/O (the host name and pid are read by `this_process()`, called by the owner
constructors, never at import time). The rules of acquiring and renewing live in
`engine.locks.service`; the storage in `engine.ports.store.LockStore`.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

#: Resource names follow the plan's names: letters, digits, `_ . -`, at most 64 characters.
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: Host names are cut to this length in owner ids (they are for people, not for routing).
_HOST_LENGTH = 64


class LockKind(StrEnum):
    #: `plan:<name>`: held by a run for its whole life; two runs of one plan exclude each other.
    PLAN = "plan"
    #: `project:<project>`: held by a run whose plan declares `project`.
    PROJECT = "project"
    #: `resource:<name>`: held by a subplan that declares `locks: [name]` while it runs.
    RESOURCE = "resource"


@dataclass(frozen=True, slots=True, order=True)
class Resource:
    """A lockable thing, written `kind:name` (`plan:nightly`, `resource:db`)."""

    kind: LockKind
    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"lock resource name {self.name!r}: use letters, digits, _ . - (1 to 64 characters)"
            )

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Resource:
        """`plan:x`, `project:x` or `resource:x`; ValueError saying what is allowed."""
        kind, sep, name = text.partition(":")
        kinds = ", ".join(f"{k.value}:NAME" for k in LockKind)
        if not sep or kind not in {k.value for k in LockKind}:
            raise ValueError(f"unknown lock resource {text!r}: use one of {kinds}")
        return cls(LockKind(kind), name)

    @classmethod
    def of(cls, value: Resource | str) -> Resource:
        return value if isinstance(value, Resource) else cls.parse(value)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lock: a run, a subplan's execution inside a run, or a named holder.

    `id` reads as `host:pid:key`, e.g. `web-1:4242:01JD3...` for a run and
    `web-1:4242:01JD3.../matrix/py311` for a subplan, so `locks list` tells who holds what. Two
    runs in one process are two owners: the key, not the process, is what excludes them.
    """

    key: str
    host: str
    pid: int
    run_id: str | None = None

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.key}"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def of_run(cls, run_id: str) -> Owner:
        host, pid = this_process()
        return cls(run_id, host, pid, run_id)

    @classmethod
    def of_subplan(cls, run_id: str, path: str) -> Owner:
        host, pid = this_process()
        return cls(f"{run_id}/{path}", host, pid, run_id)

    @classmethod
    def named(cls, key: str) -> Owner:
        """An owner for code that locks outside a run (scripts, the Python API)."""
        host, pid = this_process()
        return cls(key, host, pid)


def this_process() -> tuple[str, int]:
    """This host's name and this process's id (asked once per process: every run asks)."""
    global _this_process
    pid = os.getpid()
    if _this_process[1] != pid:  # first call, or a forked child
        _this_process = (socket.gethostname()[:_HOST_LENGTH] or "localhost", pid)
    return _this_process


_this_process = ("", -1)


@dataclass(frozen=True, slots=True)
class LockRecord:
    """One held (or expired, not yet purged) lock as a store keeps it. Times are UTC."""

    resource: Resource
    owner_id: str
    acquired_at: datetime
    expires_at: datetime
    #: How many times the owner holds it (re-entrant acquires); released at zero.
    depth: int
    host: str
    pid: int
    run_id: str | None = None

    @classmethod
    def claim(cls, resource: Resource, owner: Owner, now: datetime, ttl: float) -> LockRecord:
        """What an acquire proposes: held by `owner` from `now` for `ttl` seconds."""
        return cls(
            resource=resource,
            owner_id=owner.id,
            acquired_at=now,
            expires_at=now + timedelta(seconds=ttl),
            depth=1,
            host=owner.host,
            pid=owner.pid,
            run_id=owner.run_id,
        )

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now


@dataclass(frozen=True, slots=True)
class RunLocking:
    """The `plan:` locks a job claim takes for the runs of the jobs it claims, in the claim's
    own transaction: the i-th job claimed (oldest first) is to run as `run_ids[i]`, and its
    run's lock on `plan:<its plan>` is proposed as `claim(i, plan, now)`. A job whose lock was
    not taken (another owner holds it, or an older job of the same plan took it in this
    claim) takes it as every run does, waiting for it."""

    run_ids: tuple[str, ...]
    host: str
    pid: int
    ttl: float

    def owner(self, i: int) -> Owner:
        run_id = self.run_ids[i]
        return Owner(run_id, self.host, self.pid, run_id)

    @property
    def owner_prefix(self) -> str:
        """What every owner id of this claim starts with: `owner(i).id` is it + `run_ids[i]`
        (for a statement that builds the ids itself)."""
        return Owner("", self.host, self.pid).id

    def claim(self, i: int, plan_name: str, now: datetime) -> LockRecord:
        return LockRecord.claim(Resource(LockKind.PLAN, plan_name), self.owner(i), now, self.ttl)

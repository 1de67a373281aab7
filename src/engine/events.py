"""`EventBus`: fan-out of events to callbacks and `async for` subscribers.

Inactive (no callback, no subscriber) means the tracker builds no event objects at all. A
callback may listen to some event types only (`kinds`); emitters ask `wants(kind)` before they
build an event, so a type that nobody wants costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.domain.events import Event

Kinds = tuple[type[Event], ...]


class EventBus:
    def __init__(self) -> None:
        #: Each callback with the event types it wants (None: every type).
        self._callbacks: list[tuple[Callable[[Event], None], Kinds | None]] = []
        self._streams: list[MemoryObjectSendStream[Event]] = []
        #: `wants` answers until the next change of listeners (asked for every lock a run
        #: takes and releases).
        self._wanted: dict[type[Event], bool] = {}

    @property
    def active(self) -> bool:
        return bool(self._callbacks or self._streams)

    def wants(self, kind: type[Event]) -> bool:
        """Whether anybody would receive an event of type `kind` (build it only then)."""
        wanted = self._wanted.get(kind)
        if wanted is None:
            wanted = self._wanted[kind] = bool(self._streams) or any(
                kinds is None or issubclass(kind, kinds) for _, kinds in self._callbacks
            )
        return wanted

    def publish(self, event: Event) -> None:
        for callback, kinds in self._callbacks:
            if kinds is None or isinstance(event, kinds):
                callback(event)
        if self._streams:
            for stream in list(self._streams):
                try:
                    stream.send_nowait(event)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._remove(stream)

    @contextmanager
    def listening(
        self, callback: Callable[[Event], None], *, kinds: Kinds | None = None
    ) -> Iterator[None]:
        """Call `callback` with every event published while the block is open, or only with
        those of the types in `kinds`."""
        entry = (callback, kinds)
        self._callbacks.append(entry)
        self._wanted.clear()
        try:
            yield
        finally:
            self._callbacks.remove(entry)
            self._wanted.clear()

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """An unbounded stream of every event published while the block is open."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._streams.append(send)
        self._wanted.clear()
        try:
            with receive:
                yield receive
        finally:
            self._remove(send)
            send.close()

    def _remove(self, stream: MemoryObjectSendStream[Event]) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            self._wanted.clear()

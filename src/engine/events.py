"""`EventBus`: fan-out of events to callbacks and `async for` subscribers.

Inactive (no callback, no subscriber) means the tracker builds no event objects at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.domain.events import Event


class EventBus:
    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], None]] = []
        self._streams: list[MemoryObjectSendStream[Event]] = []

    @property
    def active(self) -> bool:
        return bool(self._callbacks or self._streams)

    def publish(self, event: Event) -> None:
        for callback in self._callbacks:
            callback(event)
        for stream in list(self._streams):
            try:
                stream.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._streams.remove(stream)

    @contextmanager
    def listening(self, callback: Callable[[Event], None]) -> Iterator[None]:
        self._callbacks.append(callback)
        try:
            yield
        finally:
            self._callbacks.remove(callback)

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """An unbounded stream of every event published while the block is open."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self._streams.append(send)
        try:
            with receive:
                yield receive
        finally:
            if send in self._streams:
                self._streams.remove(send)
            send.close()

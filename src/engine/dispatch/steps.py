"""Executing one attempt of a step: a `run` command in its own process group, or a `call`.

This module owns process lifetime: every process group it starts is gone when the attempt
returns, whatever the exit path (success, failure, timeout, cancellation). It never retries and
never touches states; the dispatcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import os
import signal
import subprocess
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

TAIL_LINES = 20
_TAIL_BYTES = 8192


class StepFailed(Exception):
    """One attempt failed; `message` is what the user sees."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


async def run_command(
    command: str | list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    kill_grace: float,
) -> None:
    """Run a shell line or an argv list; output goes to `log_path`. Non-zero exit → StepFailed.

    The start is shielded: cancelled while it waits for the new process, asyncio would kill the
    leader alone and leave any child it had started already; once the process is ours, the
    `finally` below stops its whole group.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled attempt starts nothing
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log, anyio.CancelScope(shield=True):
        try:
            if isinstance(command, str):
                proc = await asyncio.create_subprocess_shell(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            else:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
        except OSError as exc:
            raise StepFailed(f"cannot start {_show(command)}: {exc.strerror or exc}") from exc
    try:
        returncode = await proc.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_group(proc, kill_grace)
    if returncode != 0:
        raise StepFailed(_describe_exit(returncode))


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Terminate the process group (SIGTERM, then SIGKILL after `grace`); reap the leader.

    Called on every exit path: after a normal exit it only kills leftovers (background children
    of the step), so nothing the step started outlives it.
    """
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    if proc.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await proc.wait()
    _signal_group(pgid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit code {returncode}"


def _show(command: str | list[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


def read_tail(log_path: Path, lines: int = TAIL_LINES) -> str | None:
    """The last `lines` lines of a log file (decoded leniently), or None if there is nothing."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            data = fh.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    if not text:
        return None
    return "\n".join(text.splitlines()[-lines:])


class CallTarget:
    """A resolved `call` target: the callable and whether it is a coroutine function."""

    __slots__ = ("func", "is_coroutine")

    def __init__(self, func: Any) -> None:
        self.func = func
        self.is_coroutine = inspect.iscoroutinefunction(func)

    @classmethod
    def resolve(cls, target: str) -> CallTarget:
        """Import "module:attribute" (attribute may be dotted). Failure → StepFailed."""
        module_name, _, attr_path = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            message = f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
            raise StepFailed(message) from exc
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise StepFailed(
                    f"{target!r}: module {module_name!r} has no {attr_path!r}"
                ) from exc
        if not callable(obj):
            raise StepFailed(f"{target!r} is not callable")
        return cls(obj)

    async def invoke(self, kwargs: Mapping[str, Any]) -> Any:
        """Coroutine functions are awaited; plain functions run in a worker thread (a timeout
        or cancellation abandons the thread: Python cannot stop it). An exception → StepFailed.
        """
        try:
            if self.is_coroutine:
                return await self.func(**kwargs)
            result = await anyio.to_thread.run_sync(
                functools.partial(self.func, **kwargs), abandon_on_cancel=True
            )
            if inspect.isawaitable(result):
                return await result
            return result
        except Exception as exc:
            raise StepFailed(f"{type(exc).__name__}: {exc}") from exc


def write_traceback(log_path: Path, failure: StepFailed) -> None:
    """Append the traceback behind a failed `call` to its log file."""
    cause = failure.__cause__
    if cause is None:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(cause)))

"""The boundary where driver errors become `StoreError`s (httpx's `map_httpcore_exceptions`).

Every call into SQLAlchemy from the SQL store runs inside `translated(...)`; nothing above the
store ever sees a SQLAlchemy, sqlite3 or asyncpg exception. Messages name the database and say
what to do.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from engine.errors import StoreError, StoreUnavailableError

#: PostgreSQL SQLSTATE classes/codes that mean "cannot reach or use this server".
_UNAVAILABLE_SQLSTATES = ("08", "28", "3D000", "57P")


@contextmanager
def translated(location: str, doing: str) -> Iterator[None]:
    """Re-raise driver errors raised while `doing` something with `location` as StoreErrors."""
    try:
        yield
    except StoreError:
        raise
    except sa_exc.DBAPIError as exc:
        raise classify(exc, location, doing) from exc
    except sa_exc.SQLAlchemyError as exc:
        raise StoreError(f"{location}: {doing} failed: {exc}") from exc
    except sqlite3.Error as exc:  # SQLite's own SQL, sent to the driver directly
        raise classify_driver(
            exc, isinstance(exc, sqlite3.IntegrityError), location, doing
        ) from exc
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailableError(
            f"{location}: cannot reach the database server ({_os_reason(exc)})"
        ) from exc


def classify(exc: sa_exc.DBAPIError, location: str, doing: str) -> StoreError:
    orig = exc.orig
    integrity = isinstance(exc, sa_exc.IntegrityError)
    return classify_driver(orig if orig is not None else exc, integrity, location, doing)


def classify_driver(orig: BaseException, integrity: bool, location: str, doing: str) -> StoreError:
    """The StoreError for a driver's own exception (`integrity`: a constraint refused it)."""
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    lowered = message.lower()
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    if integrity:
        return StoreError(f"{location}: {doing} was refused by a constraint: {message}")
    if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return StoreUnavailableError(f"{location}: cannot use the database: {message}")
    if "database is locked" in lowered or "database is busy" in lowered:
        return StoreError(
            f"{location}: {doing} failed: another process kept the database locked for too "
            "long; try again when it is done"
        )
    if "unable to open database file" in lowered:
        return StoreUnavailableError(
            f"{location}: cannot open the database file (does its folder exist and is it writable?)"
        )
    if "readonly database" in lowered or "read-only" in lowered:
        return StoreError(f"{location}: {doing} failed: the database is read-only")
    if "disk" in lowered and ("full" in lowered or "i/o" in lowered):
        return StoreError(f"{location}: {doing} failed: {message}")
    if sqlstate == "42P01" or "no such table" in lowered:
        return StoreError(
            f"{location}: {doing} failed: a table is missing ({message}); "
            "run `python -m engine db upgrade`"
        )
    return StoreError(f"{location}: {doing} failed: {message}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__

"""Store backends, chosen by the scheme of a database URL.

    memory://                                   MemoryStore (this process only)
    sqlite+aiosqlite:///relative/path.db        SQLite file (the default: .engine/engine.db)
    sqlite+aiosqlite:////absolute/path.db       (`sqlite://` is accepted as the same)
    postgresql+asyncpg://user:pw@host:5432/db   PostgreSQL (`postgresql://`, `postgres://` too)

Drivers are imported only when their URL is opened, so `import engine` loads no database code.
Only `engine.app` and `engine.cli` import this package. A URL is only ever shown through
`shown_url` (or, unparsed, with its user information masked): a password never is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import StoreUnavailableError, StoreURLError
from engine.ports.store import Store
from engine.redaction import redact
from engine.store.memory import MemoryStore

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from engine.store.sql import SchemaStatus

__all__ = [
    "MemoryStore",
    "SchemaStatus",
    "open_store",
    "parse_url",
    "schema_status",
    "shown_url",
    "upgrade",
]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_FORMS = "sqlite+aiosqlite:///PATH, postgresql+asyncpg://USER@HOST:PORT/DATABASE or memory://"


async def open_store(url: str) -> Store:
    """Open the store a URL names, ready to use (schema checked; SQLite created or upgraded).

    Raises StoreURLError (unknown scheme, malformed URL, driver missing), NotADatabaseError,
    SchemaVersionError or StoreUnavailableError, each with a message that says what to do.
    """
    if _scheme(url) == "memory":
        return MemoryStore()
    parsed = parse_url(url)
    location = shown_url(parsed)
    try:
        from engine.store.sql import open_sql_store
    except ImportError as exc:  # pragma: no cover - a broken installation
        raise StoreURLError(f"{location}: the SQL store cannot be loaded: {exc}") from exc
    try:
        return await open_sql_store(parsed, location)
    except OSError as exc:
        # Creating the SQLite file's folder failed.
        raise StoreUnavailableError(f"{location}: {exc.strerror or exc}") from exc


async def schema_status(url: str) -> SchemaStatus:
    """`db current`: the schema revision of the database a URL names (changes nothing)."""
    from engine.store.sql import schema_status as status

    parsed = _sql_url(url)
    return await status(parsed, shown_url(parsed))


async def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """`db upgrade`: bring the schema to `revision`; the revisions before and after."""
    from engine.store.sql import upgrade as run_upgrade

    parsed = _sql_url(url)
    try:
        return await run_upgrade(parsed, shown_url(parsed), revision)
    except OSError as exc:
        raise StoreUnavailableError(f"{shown_url(parsed)}: {exc.strerror or exc}") from exc


def _sql_url(url: str) -> URL:
    if _scheme(url) == "memory":
        raise StoreURLError("memory:// keeps nothing between processes and has no schema")
    return parse_url(url)


def parse_url(url: str) -> URL:
    """Validate a database URL and name its async driver (`sqlite://` -> `sqlite+aiosqlite://`)."""
    scheme = _scheme(url)
    driver = _DRIVERS.get(scheme)
    if driver is None:
        shown = _mask_userinfo(url)
        raise StoreURLError(
            f"unsupported database URL {shown!r} (scheme {scheme or 'missing'!r}); use {_FORMS}"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreURLError(f"malformed database URL: {exc}; use {_FORMS}") from None
    parsed = parsed.set(drivername=driver)
    if "@" in (parsed.host or ""):
        # SQLAlchemy ends the password at the first "@": the rest would be shown as the host.
        raise StoreURLError(
            f"{_mask_userinfo(url)}: the user name or password contains an unencoded '@'; "
            "write it as %40"
        )
    if driver == "postgresql+asyncpg":
        _require("asyncpg", "postgresql", parsed)
        if not parsed.database:
            raise StoreURLError(f"{shown_url(parsed)}: the URL names no database")
    return parsed


def shown_url(url: URL) -> str:
    """How a database URL is shown (messages, `diagnostics`, `db current`): its password, and
    query parameters such as `?password=...`, masked."""
    return redact(url.render_as_string(hide_password=True), environ={})


def _mask_userinfo(url: str) -> str:
    """An unparsed URL with everything between `://` and its last `@` masked (a password
    may hold an unencoded `@`, `:` or `/`)."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{head}://***@{rest.rpartition('@')[2]}"


def _scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def _require(module: str, extra: str, url: URL) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise StoreURLError(
            f"{shown_url(url)} needs the {module} driver: pip install 'engine[{extra}]'"
        )

"""Global configuration: defaults < TOML file < `ENGINE_*` environment < command-line flags.

Built once (by the CLI or the `Engine`) and passed down; nothing reads the environment at import
time. Every value is validated by pydantic and every problem is reported naming the key, what is
allowed and what was found.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.domain.plan import DEFAULT_MAX_PARALLEL, MAX_PARALLEL_LIMIT
from engine.domain.states import FailureMode
from engine.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.engine/engine.db"
CONFIG_FILE_NAME = "engine.toml"

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = DEFAULT_DATABASE_URL


class AsyncSettings(_Section):
    enabled: bool = False
    max_workers: Annotated[int, Field(ge=1, le=256)] = 4
    poll_interval: Seconds = 1.0
    job_timeout: Seconds = 3600.0
    job_ttl: Seconds = 604800.0
    heartbeat_interval: Seconds = 5.0
    stuck_after: Seconds = 60.0


class LockSettings(_Section):
    plan_ttl: Seconds = 300.0
    project_ttl: Seconds = 600.0


class Settings(_Section):
    """Every global setting. `async` is a Python keyword, so that section is `async_` here."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    database: DatabaseSettings = DatabaseSettings()
    max_parallel: Annotated[int, Field(ge=1, le=MAX_PARALLEL_LIMIT)] = DEFAULT_MAX_PARALLEL
    failure_mode: FailureMode = FailureMode.FAIL_FAST
    #: Where run logs (and the default SQLite file) live, relative to the working directory.
    data_dir: str = ".engine"
    #: Base of the exponential backoff between retries (seconds; full jitter, capped at 60 s).
    retry_backoff: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    #: Grace between SIGTERM and SIGKILL when a step's process group is stopped.
    kill_grace: Seconds = 5.0
    async_: AsyncSettings = Field(default=AsyncSettings(), alias="async")
    locks: LockSettings = LockSettings()


#: key (dotted, as in the TOML file) -> environment variable.
ENV_VARS: dict[str, str] = {
    "database.url": "ENGINE_DATABASE_URL",
    "max_parallel": "ENGINE_MAX_PARALLEL",
    "failure_mode": "ENGINE_FAILURE_MODE",
    "data_dir": "ENGINE_DATA_DIR",
    "retry_backoff": "ENGINE_RETRY_BACKOFF",
    "kill_grace": "ENGINE_KILL_GRACE",
    "async.enabled": "ENGINE_ASYNC_ENABLED",
    "async.max_workers": "ENGINE_ASYNC_MAX_WORKERS",
    "async.poll_interval": "ENGINE_ASYNC_POLL_INTERVAL",
    "async.job_timeout": "ENGINE_ASYNC_JOB_TIMEOUT",
    "async.job_ttl": "ENGINE_ASYNC_JOB_TTL",
    "async.heartbeat_interval": "ENGINE_ASYNC_HEARTBEAT_INTERVAL",
    "async.stuck_after": "ENGINE_ASYNC_STUCK_AFTER",
    "locks.plan_ttl": "ENGINE_LOCKS_PLAN_TTL",
    "locks.project_ttl": "ENGINE_LOCKS_PROJECT_TTL",
}


def load_settings(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge the sources (highest last) and validate. `overrides` uses dotted keys."""
    env = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}

    path = _config_path(config_file, env, cwd)
    if path is not None:
        for key, value in _flatten(_read_toml(path)).items():
            merged[key] = value
            origin[key] = str(path)
    for key, var in ENV_VARS.items():
        if var in env:
            merged[key] = env[var]
            origin[key] = f"environment variable {var}"
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
            origin[key] = "command line"

    try:
        return Settings.model_validate(_nest(merged))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def _config_path(explicit: str | Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
    elif env.get("ENGINE_CONFIG"):
        path = Path(env["ENGINE_CONFIG"])
    else:
        default = cwd / CONFIG_FILE_NAME
        return default if default.is_file() else None
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def _describe(exc: ValidationError, origin: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        src = origin.get(key, "configuration")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, ENV_VARS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(ENV_VARS)}"
            lines.append(f"{src}: unknown key {key!r} ({hint})")
        else:
            lines.append(f"{src}: {key} {err['msg'].lower()}, got {err.get('input')!r}")
    return "\n".join(lines)

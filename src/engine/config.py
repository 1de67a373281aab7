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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from engine.domain.plan import DEFAULT_MAX_PARALLEL, MAX_PARALLEL_LIMIT
from engine.domain.states import FailureMode
from engine.errors import ConfigError
from engine.redaction import redact
from engine.signing import MIN_KEY_LENGTH

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
    #: Key of job payload signatures (ENGINE_SIGNING_KEY; docs/security.md): `submit` signs,
    #: workers refuse unsigned or tampered jobs. Environment or code only, never a file; shown
    #: as `**********`.
    signing_key: Annotated[SecretStr | None, Field(min_length=MIN_KEY_LENGTH)] = None


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
    "async.signing_key": "ENGINE_SIGNING_KEY",
    "locks.plan_ttl": "ENGINE_LOCKS_PLAN_TTL",
    "locks.project_ttl": "ENGINE_LOCKS_PROJECT_TTL",
}
#: Keys whose values are secrets: never read from a configuration file, never quoted in errors.
SECRET_KEYS = frozenset({"async.signing_key"})


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
            if key in SECRET_KEYS:
                raise ConfigError(
                    f"{path}: {key} cannot be set in a configuration file (a secret in a file "
                    f"is easily committed or shared); set {ENV_VARS[key]} in the environment"
                )
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

    # TOML values are typed: `max_parallel = true` or `"3"` is a mistake, not a 1 or a 3 (only
    # environment values are text to convert). Checked here, as pydantic's lax mode accepts them.
    lines = []
    for key in [k for k in merged if path is not None and origin[k] == str(path)]:
        problem = _type_problem(key, merged[key])
        if problem is not None:
            lines.append(f"{origin[key]}: {problem}")
            del merged[key]
    try:
        settings = Settings.model_validate(_nest(merged))
    except ValidationError as exc:
        lines += _describe(exc, origin)
    if lines:
        raise ConfigError("\n".join(lines))
    problem = _folder_problem(settings.data_dir)
    if problem is not None:
        raise ConfigError(f"{origin.get('data_dir', 'configuration')}: data_dir {problem}")
    return settings


def _config_path(explicit: str | Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
    elif env.get("ENGINE_CONFIG"):
        path = Path(env["ENGINE_CONFIG"])
    else:
        default = cwd / CONFIG_FILE_NAME
        return default if default.is_file() else None
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a configuration file")
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
        if isinstance(value, Mapping) and value:  # an empty table is kept: `[typo]` is an error
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


def _describe(exc: ValidationError, origin: Mapping[str, str]) -> list[str]:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        # A key that is not a leaf (`[async.typo]`, `"a.b" = 1`) comes from where its leaves do.
        inner = (src for dotted, src in origin.items() if dotted.startswith(f"{key}."))
        src = origin.get(key) or next(inner, "configuration")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, ENV_VARS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(ENV_VARS)}"
            lines.append(f"{src}: unknown key {_shown(key)} ({hint})")
        elif key in SECRET_KEYS:  # never quote a secret, nor its length
            problem = (
                f"must be at least {MIN_KEY_LENGTH} characters (generate one with "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`)"
                if err["type"] == "too_short"
                else err["msg"].lower()
            )
            lines.append(f"{src}: {key} {problem}")
        elif err["type"] == "model_type":  # pydantic says "a dictionary or instance of ..."
            lines.append(f"{src}: {key} must be a table ([{key}]), got {_shown(err.get('input'))}")
        else:
            lines.append(f"{src}: {key} {err['msg'].lower()}, got {_shown(err.get('input'))}")
    return lines


_TYPES: dict[object, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "a valid boolean"),
    int: ((int,), "a valid integer"),
    float: ((int, float), "a valid number"),
}


def _type_problem(key: str, value: object) -> str | None:
    """What is wrong with the type of a value read from the TOML file, if anything."""
    model: type[BaseModel] = Settings
    *sections, leaf = key.split(".")
    for part in sections:
        section = _field(model, part)
        if section is None or not (
            isinstance(section.annotation, type) and issubclass(section.annotation, BaseModel)
        ):
            return None  # an unknown key, or a section that is not one: pydantic reports it
        model = section.annotation
    info = _field(model, leaf)
    accepted = _TYPES.get(info.annotation) if info is not None else None
    if accepted is None or type(value) in accepted[0]:
        return None
    return f"{key} input should be {accepted[1]}, got {_shown(value)}"


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)


def _shown(value: object) -> str:
    """A found value as messages show it: TOML-style booleans, at most 80 characters, a
    URL's password (and other secrets) masked."""
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    text = redact(text, environ={})
    return text if len(text) <= 80 else f"{text[:77]}..."


def _folder_problem(folder: str) -> str | None:
    """Why `data_dir` cannot be a folder (a file in its way, a name too long), if it cannot;
    found by looking only: nothing is created."""
    path = Path(folder)
    try:
        for candidate in (path, *path.parents):
            if candidate.exists():
                if candidate.is_dir():
                    return None
                return f"must be a folder, but {_shown(str(candidate))} is a file"
    except OSError as exc:
        return f"{_shown(folder)} cannot be a folder: {exc.strerror or exc}"
    return None

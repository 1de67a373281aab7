"""Settings: precedence of the sources, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, FailureMode, load_settings


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.max_parallel == 4
    assert s.failure_mode is FailureMode.FAIL_FAST
    assert s.database.url == "sqlite+aiosqlite:///.engine/engine.db"
    assert s.async_.heartbeat_interval == 5
    assert s.locks.project_ttl == 600


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text(
        'max_parallel = 3\nfailure_mode = "continue_on_error"\n[async]\nmax_workers = 7\n'
        "stuck_after = 0.5\n"
    )
    env = {"ENGINE_MAX_PARALLEL": "5", "ENGINE_ASYNC_MAX_WORKERS": "9"}
    s = load_settings(environ=env, cwd=tmp_path)
    assert s.max_parallel == 5
    assert s.failure_mode is FailureMode.CONTINUE_ON_ERROR
    assert s.async_.max_workers == 9
    assert s.async_.stuck_after == 0.5
    s = load_settings(environ=env, cwd=tmp_path, overrides={"max_parallel": 6})
    assert s.max_parallel == 6


def test_explicit_config_file_and_env_config(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[locks]\nplan_ttl = 12\n")
    assert load_settings(config_file=other, environ={}, cwd=tmp_path).locks.plan_ttl == 12
    s = load_settings(environ={"ENGINE_CONFIG": str(other)}, cwd=tmp_path)
    assert s.locks.plan_ttl == 12
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(config_file=tmp_path / "nope.toml", environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENGINE_MAX_PARALLEL": "0"}, "ENGINE_MAX_PARALLEL: max_parallel"),
        ({"ENGINE_MAX_PARALLEL": "lots"}, "got 'lots'"),
        ({"ENGINE_FAILURE_MODE": "fast"}, "failure_mode"),
        ({"ENGINE_ASYNC_HEARTBEAT_INTERVAL": "0"}, "async.heartbeat_interval"),
        ({"ENGINE_LOCKS_PLAN_TTL": "-1"}, "locks.plan_ttl"),
        ({"ENGINE_ASYNC_ENABLED": "perhaps"}, "async.enabled"),
    ],
)
def test_bad_values_name_source_key_and_value(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env, cwd=tmp_path)


def test_unknown_and_malformed_file(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text("max_paralel = 3\n")
    with pytest.raises(
        ConfigError, match="unknown key 'max_paralel' \\(did you mean 'max_parallel'\\?\\)"
    ):
        load_settings(environ={}, cwd=tmp_path)
    (tmp_path / "engine.toml").write_text("max_parallel = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={}, cwd=tmp_path)

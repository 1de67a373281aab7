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


# --- found by fuzzing (tests/reliability/fuzz.py, issue 7) ------------------------------------


def _problem(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "engine.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env or {}, cwd=tmp_path)
    return str(info.value).replace(str(tmp_path / "engine.toml"), "engine.toml")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("max_parallel = true", "max_parallel input should be a valid integer, got true"),
        ('max_parallel = "3"', "max_parallel input should be a valid integer, got '3'"),
        ("max_parallel = 3.0", "max_parallel input should be a valid integer, got 3.0"),
        ("kill_grace = true", "kill_grace input should be a valid number, got true"),
        ('[locks]\nplan_ttl = "5"', "locks.plan_ttl input should be a valid number, got '5'"),
        ("[async]\nenabled = 1", "async.enabled input should be a valid boolean, got 1"),
        ('[async]\nenabled = "yes"', "async.enabled input should be a valid boolean, got 'yes'"),
    ],
)
def test_a_toml_value_of_the_wrong_type_is_not_converted(
    tmp_path: Path, toml: str, expected: str
) -> None:
    # pydantic's lax mode took these (true as 1, "yes" as true): TOML values are typed.
    assert _problem(tmp_path, toml + "\n") == f"engine.toml: {expected}"


def test_toml_integers_still_count_as_seconds_and_variables_are_still_text(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text("kill_grace = 2\n[async]\nenabled = false\n")
    env = {"ENGINE_MAX_PARALLEL": "7", "ENGINE_ASYNC_ENABLED": "yes"}
    settings = load_settings(environ=env, cwd=tmp_path)
    assert (settings.kill_grace, settings.max_parallel, settings.async_.enabled) == (2, 7, True)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        # An empty table was dropped unread: a misspelt section passed silently.
        ("[asnyc]", "engine.toml: unknown key 'asnyc' (known keys: "),
        ("[max_parallel]", "engine.toml: max_parallel input should be a valid integer, got {}"),
        # A key below a leaf, or a quoted dotted key, was reported as from "configuration".
        ("[async.deep]\nx = 1", "engine.toml: unknown key 'async.deep' (did you mean"),
        ('"max.parallel" = 1', "engine.toml: unknown key 'max' (known keys: "),
        # "input should be a valid dictionary or instance of asyncsettings"
        ("async = 3", "engine.toml: async must be a table ([async]), got 3"),
        ("[[locks]]", "engine.toml: locks must be a table ([locks]), got [{}]"),
    ],
)
def test_toml_problems_name_the_file(tmp_path: Path, toml: str, expected: str) -> None:
    assert _problem(tmp_path, toml + "\n").startswith(expected)


def test_long_values_are_shown_shortened(tmp_path: Path) -> None:
    message = _problem(tmp_path, f'failure_mode = "{"x" * 5000}"\n')
    assert message.endswith(f"got '{'x' * 76}...")
    assert len(message) < 200


def test_a_configuration_file_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a configuration file"):
        load_settings(config_file=tmp_path, environ={}, cwd=tmp_path)


@pytest.mark.parametrize("data_dir", ["afile", "afile/logs", "x" * 5000])
def test_a_data_dir_that_cannot_be_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: str
) -> None:
    # It failed mid-run, with a traceback, once the run had started and been recorded.
    (tmp_path / "afile").write_text("a file")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ENGINE_DATA_DIR": data_dir}, cwd=tmp_path)
    message = str(info.value)
    assert message.startswith("environment variable ENGINE_DATA_DIR: data_dir ")
    if data_dir.startswith("afile"):
        assert message.endswith("must be a folder, but 'afile' is a file")
    else:
        assert message.endswith("cannot be a folder: File name too long")
    assert len(message) < 200

"""Secrets never shown or stored (docs/security.md): a database URL's password in any message of
any command, and the output tails and errors of failed subplans (redacted before they are
recorded). Through the real CLI where it matters: a child process, its output, its database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from clitools import engine_env, run_engine
from engine.app import Engine
from engine.config import load_settings
from engine.domain.states import SubplanState
from engine.errors import ConfigError, StoreError, StoreURLError
from engine.store import open_store
from engine.testing import settings_for_test

PASSWORD = "s3cret-pw-4711"
CLOSED = f"postgresql+asyncpg://user:{PASSWORD}@127.0.0.1:1/db"


def test_no_command_prints_the_password_of_an_unreachable_database(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"name": "p", "subplans": [{"name": "a", "run": "true"}]}))
    env = engine_env(tmp_path, {"ENGINE_DATABASE_URL": CLOSED})
    commands = [
        ["run", str(plan)],
        ["submit", str(plan)],
        ["worker", "--burst"],
        ["diagnostics", "--json"],
        ["db", "current"],
        ["db", "upgrade"],
        ["jobs", "list", "--db", CLOSED],
    ]
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    for args, proc in zip(commands, started, strict=True):
        out, err = proc.communicate(timeout=45)
        assert proc.returncode == 1, (args, out, err)
        assert PASSWORD not in out + err, args
        assert "Traceback" not in err, (args, err)
        assert "postgresql+asyncpg://user:***@127.0.0.1:1/db: cannot reach" in err, (args, err)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        # SQLAlchemy would end the password at the first "@" and show the rest as the host.
        ("postgresql+asyncpg://user:s3cret@pw@127.0.0.1:1/db", StoreURLError),
        ("mysql://user:s3cret@pw@127.0.0.1:1/db", StoreURLError),
        ("mysql://user:s3cret/pw@127.0.0.1:1/db", StoreURLError),
        ("sqlite+aiosqlite://user:s3cret@/x.db", StoreURLError),
        ("postgresql+asyncpg://user:s3cret@127.0.0.1:1/", StoreURLError),
        # A password given as a query parameter.
        ("postgresql+asyncpg://user@127.0.0.1:1/db?password=s3cret", StoreError),
    ],
)
async def test_store_errors_never_quote_a_password(url: str, kind: type[Exception]) -> None:
    with pytest.raises(kind) as caught:
        await open_store(url)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "pw@" not in message
    assert "***" in message


def test_a_configuration_error_never_quotes_a_database_password(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text(f'database = "{CLOSED}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert PASSWORD not in str(caught.value)
    assert "user:***@" in str(caught.value)


SECRETS = {
    "MY_TOKEN": "tok-a1b2c3d4e5f6g7",  # a secret-looking name: its value is masked anywhere
    "DB_DSN": "postgresql://app:hunter2-pw@db.internal:5432/app",  # the URL's password is
    "API_HEADER": "Authorization: Bearer bearer-xyz-123",  # bearer credentials are
}
LEAKS = ("tok-a1b2c3d4e5f6g7", "hunter2-pw", "bearer-xyz-123")


def test_the_output_tail_of_a_failed_step_is_redacted_before_it_is_stored(tmp_path: Path) -> None:
    step = 'echo "token $MY_TOKEN"; echo "dsn $DB_DSN"; echo "$API_HEADER"; exit 3'
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"name": "leaky", "subplans": [{"name": "out", "run": step}]}))
    env = engine_env(tmp_path, SECRETS)

    ran = run_engine("run", str(plan), cwd=tmp_path, env=env)
    assert ran.returncode == 1, ran.stderr
    assert "postgresql://app:***@db.internal:5432/app" in ran.stdout  # the summary's tail
    db = tmp_path / "engine.db"
    with sqlite3.connect(db) as conn:
        [(run_id, tail)] = conn.execute(
            "SELECT run_id, output_tail FROM engine_subplan_runs WHERE path = 'out'"
        ).fetchall()
    assert tail.splitlines() == [
        "token ***",
        "dsn postgresql://app:***@db.internal:5432/app",
        "Authorization: ***",
    ]
    shown = run_engine("runs", "show", run_id, cwd=tmp_path, env=env)
    shown_json = run_engine("runs", "show", run_id, "--json", cwd=tmp_path, env=env)
    assert shown.returncode == shown_json.returncode == 0, shown.stderr + shown_json.stderr
    assert "    token ***" in shown.stdout
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("engine.db*"))
    for leak in LEAKS:
        for done in (ran, shown, shown_json):
            assert leak not in done.stdout + done.stderr, leak
        assert leak.encode() not in stored, leak


async def test_a_failed_call_steps_error_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "call-token-98765")
    plan = {
        "name": "calls",
        "subplans": [
            {
                "name": "boom",
                "call": "stepkit:fail",
                "with": {"message": "postgresql://u:pw-in-error@h/db refused call-token-98765"},
            }
        ],
    }
    async with Engine(settings_for_test(tmp_path)) as eng:
        result = await eng.run_plan(plan_from(plan, tmp_path))
        [record] = await eng.store.list_subplans(result.run_id)
    sub = result.subplans["boom"]
    assert sub.state is SubplanState.FAILED
    for error in (sub.error, record.error, result.error):
        assert error is not None
        assert "pw-in-error" not in error
        assert "call-token-98765" not in error
    assert sub.error == "RuntimeError: postgresql://u:***@h/db refused ***"


def plan_from(data: dict[str, object], folder: Path) -> Path:
    path = folder / "plan.json.yaml"
    path.write_text(json.dumps(data))
    return path

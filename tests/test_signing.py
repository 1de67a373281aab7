"""Signed job payloads (`engine.signing`, ENGINE_SIGNING_KEY): sign and verify, what a worker
with a key refuses (and never runs), and that the key itself never shows up anywhere."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

import stepkit
from clitools import engine_env, run_engine
from engine import Engine
from engine.config import load_settings
from engine.domain.job import AsyncJob, deserialize_job_payload, serialize_job_payload
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus
from engine.errors import ConfigError, JobPayloadError, JobSignatureError
from engine.signing import SIGNATURE_FIELD, sign_payload, verify_payload
from engine.testing import ManualClock, hosted, settings_for_test

KEY = "k3y-0123456789abcdef-never-shown"
OTHER_KEY = "another-key-0123456789abcdef"
JOB_ID = "01J00000000000000000000001"


def plan(name: str = "p", **step: Any) -> Plan:
    step = step or {"call": "stepkit:value", "with": {"x": 1}}
    return Plan.model_validate({"name": name, "subplans": [{"name": "a", **step}]})


def signed(payload: str, job_id: str = JOB_ID, key: str = KEY) -> str:
    return sign_payload(payload, job_id, SecretStr(key))


# -- sign and verify ---------------------------------------------------------------------------


def test_a_signed_payload_verifies_and_still_reads_as_the_same_plan(tmp_path: Path) -> None:
    payload = serialize_job_payload(plan(), tmp_path)
    text = signed(payload)
    verify_payload(text, JOB_ID, SecretStr(KEY))
    verify_payload(text, JOB_ID, KEY)  # the key's text works as well as the setting
    data = json.loads(text)
    assert data[SIGNATURE_FIELD].startswith("hmac-sha256:")
    assert len(data[SIGNATURE_FIELD]) == len("hmac-sha256:") + 64
    # What was signed is exactly what serialize_job_payload wrote; signing adds one field.
    del data[SIGNATURE_FIELD]
    assert json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == payload
    assert deserialize_job_payload(text) == deserialize_job_payload(payload)
    assert signed(text) == text  # re-signing replaces the signature with the same one


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        pytest.param(lambda d: d.pop(SIGNATURE_FIELD), "missing", id="missing"),
        pytest.param(
            lambda d: d["plan"]["subplans"][0].update({"call": "os:system"}), "invalid", id="plan"
        ),
        pytest.param(lambda d: d.update(workdir="/elsewhere"), "invalid", id="workdir"),
        pytest.param(lambda d: d.update(extra=1), "invalid", id="added-field"),
        pytest.param(lambda d: d.update(signature="hmac-sha256:" + "0" * 64), "invalid", id="zero"),
        pytest.param(lambda d: d.update(signature="sha1:abc"), "invalid", id="other-scheme"),
        pytest.param(lambda d: d.update(signature=42), "invalid", id="not-text"),
        pytest.param(lambda d: d.update(signature="hmac-sha256:XYZ"), "invalid", id="not-hex"),
        pytest.param(lambda d: d.update(plan_source="\ud800"), "invalid", id="lone-surrogate"),
    ],
)
def test_a_changed_payload_is_refused(tmp_path: Path, change: Any, wanted: str) -> None:
    data = json.loads(signed(serialize_job_payload(plan(), tmp_path)))
    change(data)
    with pytest.raises(JobSignatureError, match=f"signature is {wanted}") as caught:
        verify_payload(json.dumps(data), JOB_ID, KEY)
    message = str(caught.value)
    assert "ENGINE_SIGNING_KEY is set on this worker" in message
    assert "not run" in message
    assert KEY not in message


def test_another_job_id_or_another_key_is_refused(tmp_path: Path) -> None:
    text = signed(serialize_job_payload(plan(), tmp_path))
    with pytest.raises(JobSignatureError, match="invalid"):
        verify_payload(text, "01J00000000000000000000002", KEY)  # copied into another job
    with pytest.raises(JobSignatureError, match="invalid"):
        verify_payload(text, JOB_ID, OTHER_KEY)


def test_a_payload_that_is_not_a_json_object_is_a_payload_error() -> None:
    for text in ("{not json", "[1, 2]", "[" * 100_000):
        with pytest.raises(JobPayloadError):
            verify_payload(text, JOB_ID, KEY)


# -- configuration -----------------------------------------------------------------------------


def test_the_key_comes_from_the_environment_and_is_never_shown() -> None:
    settings = load_settings(environ={"ENGINE_SIGNING_KEY": KEY})
    key = settings.async_.signing_key
    assert key is not None
    assert key.get_secret_value() == KEY
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(key)):
        assert KEY not in shown
    assert load_settings(environ={}).async_.signing_key is None


def test_a_short_key_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"ENGINE_SIGNING_KEY": "short-s3cret"})
    message = str(caught.value)
    assert "ENGINE_SIGNING_KEY" in message
    assert "at least 16 characters" in message
    assert "short-s3cret" not in message


def test_the_key_cannot_be_put_in_a_configuration_file(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text(f'[async]\nsigning_key = "{KEY}"\n')
    with pytest.raises(ConfigError, match="set ENGINE_SIGNING_KEY in the environment") as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert KEY not in str(caught.value)


# -- a worker in-process -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def stepkit_state() -> Iterator[None]:
    stepkit.reset()
    yield
    stepkit.reset()


def open_engine(clock: ManualClock, tmp_path: Path, key: str | None) -> Engine:
    overrides = {"async.signing_key": key} if key is not None else {}
    return Engine(settings_for_test(tmp_path, **overrides), clock=clock)


@pytest.fixture
async def signing(manual_clock: ManualClock, tmp_path: Path) -> AsyncIterator[Engine]:
    async with hosted(open_engine(manual_clock, tmp_path, KEY)) as eng:
        yield eng


def counting(group: str) -> Plan:
    return plan(group, call="stepkit:probe", **{"with": {"group": group}})


async def test_submit_signs_and_a_worker_with_the_key_runs_the_job(signing: Engine) -> None:
    job_id = await signing.submit(counting("ok"))
    job = await signing.get_job(job_id)
    verify_payload(job.payload, job_id, KEY)
    pool = signing.worker(burst=True)
    await pool.run()
    job = await signing.get_job(job_id)
    assert (job.status, job.error_message) == (AsyncJobStatus.SUCCEEDED, None)
    assert stepkit.peak["ok"] == 1


async def test_a_worker_with_the_key_fails_unsigned_and_tampered_jobs_unrun(
    signing: Engine, tmp_path: Path
) -> None:
    now = signing.clock.now()
    unsigned = AsyncJob.new(counting("unsigned"), now, workdir=tmp_path)
    honest = AsyncJob.new(counting("honest"), now, workdir=tmp_path)
    tampered_payload = json.loads(signed(honest.payload, honest.id))
    tampered_payload["plan"]["subplans"][0]["with"]["group"] = "tampered"
    tampered = honest.model_copy(update={"payload": json.dumps(tampered_payload)})
    other = AsyncJob.new(counting("other-key"), now, workdir=tmp_path)
    other = other.model_copy(update={"payload": signed(other.payload, other.id, OTHER_KEY)})
    # What a writer of the store (not the key) can do: insert rows directly.
    await signing.store.enqueue_jobs([unsigned, tampered, other])
    pool = signing.worker(burst=True)
    await pool.run()
    assert pool.statistics().failed == 3
    for job, wanted in ((unsigned, "missing"), (tampered, "invalid"), (other, "invalid")):
        found = await signing.get_job(job.id)
        assert found.status is AsyncJobStatus.FAILED
        assert found.error_message is not None
        assert f"job payload signature is {wanted}" in found.error_message
        assert "ENGINE_SIGNING_KEY is set on this worker" in found.error_message
        assert found.run_id is None  # no run was even prepared
    assert dict(stepkit.peak) == {}  # nothing ran
    assert await signing.store.list_runs() == []


async def test_a_worker_without_a_key_runs_signed_and_unsigned_jobs(
    manual_clock: ManualClock, tmp_path: Path
) -> None:
    async with open_engine(manual_clock, tmp_path, None) as eng:
        now = eng.clock.now()
        job = AsyncJob.new(counting("signed"), now, workdir=tmp_path)
        job = job.model_copy(update={"payload": signed(job.payload, job.id)})
        await eng.store.enqueue_jobs([job])
        plain = await eng.submit(counting("plain"))
        assert SIGNATURE_FIELD not in json.loads((await eng.get_job(plain)).payload)
        await eng.worker(burst=True).run()
        for job_id in (job.id, plain):
            assert (await eng.get_job(job_id)).status is AsyncJobStatus.SUCCEEDED
    assert (stepkit.peak["signed"], stepkit.peak["plain"]) == (1, 1)


# -- end to end: python -m engine submit / worker ---------------------------------------------


def write_plan(folder: Path, name: str, marker: Path) -> Path:
    path = folder / f"{name}.yaml"
    step = {"name": "touch", "run": ["touch", str(marker)]}
    path.write_text(json.dumps({"name": name, "subplans": [step]}))
    return path


def every_file_bytes(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def insert_jobs(tmp_path: Path, plans: list[Path], key: str | None) -> list[str]:
    """Queue plan files in-process on the test's SQLite file, signed with `key` if given."""
    overrides = {"async.signing_key": key} if key is not None else {}
    settings = load_settings(environ=engine_env(tmp_path), cwd=tmp_path, overrides=overrides)

    async def go() -> list[str]:
        async with Engine(settings, database_url=settings.database.url) as eng:
            return [await eng.submit(path) for path in plans]

    return anyio.run(go)


def test_cli_submit_signs_and_a_worker_refuses_what_the_key_did_not_sign(tmp_path: Path) -> None:
    env = engine_env(tmp_path, {"ENGINE_SIGNING_KEY": KEY})
    good, bad, legit, evil = (tmp_path / f"{n}.marker" for n in ("good", "bad", "legit", "evil"))
    submitted = run_engine("submit", str(write_plan(tmp_path, "good", good)), cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    good_id = submitted.stdout.strip()
    # Queued without the key: what anyone who can write to the database can do.
    [bad_id] = insert_jobs(tmp_path, [write_plan(tmp_path, "bad", bad)], key=None)
    # Signed, then rewritten in the database to run something else.
    [evil_id] = insert_jobs(tmp_path, [write_plan(tmp_path, "legit", legit)], key=KEY)
    db = tmp_path / "engine.db"
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            "UPDATE engine_jobs SET payload = replace(payload, 'legit.marker', 'evil.marker') "
            "WHERE id = ?",
            (evil_id,),
        ).rowcount
    assert changed == 1

    worker = run_engine("worker", "--burst", cwd=tmp_path, env=env)
    assert worker.returncode == 0, worker.stderr
    assert "signed jobs only" in worker.stderr
    assert f"job {bad_id}: job payload signature is missing" in worker.stderr  # logged
    assert good.exists()
    assert not bad.exists()
    assert not legit.exists()
    assert not evil.exists()

    with sqlite3.connect(db) as conn:
        rows = {
            row[0]: row[1:]
            for row in conn.execute("SELECT id, status, error_message, run_id FROM engine_jobs")
        }
        runs = conn.execute("SELECT count(*) FROM engine_runs").fetchone()[0]
    assert rows[good_id][0] == "succeeded"
    assert rows[bad_id][:2] == (
        "failed",
        "job payload signature is missing (ENGINE_SIGNING_KEY is set on this worker); not run: "
        "submit the job again with ENGINE_SIGNING_KEY set",
    )
    assert rows[evil_id][0] == "failed"
    assert "job payload signature is invalid" in rows[evil_id][1]
    assert (rows[bad_id][2], rows[evil_id][2]) == (None, None)  # no run was made for them
    assert runs == 1  # only the good job's

    # The key is nowhere: not in any output, not in the database, not in the logs.
    for done in (submitted, worker):
        assert KEY not in done.stdout + done.stderr
    for path, data in every_file_bytes(tmp_path):
        assert KEY.encode() not in data, path

"""`engine.redaction`: what counts as a secret in free text, and that it never survives."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.redaction import REDACTED, Redactor, looks_secret, redact

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "name",
    [
        "GITHUB_TOKEN",
        "aws_secret_access_key",
        "DB_PASSWORD",
        "PGPASSWD",
        "API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "PGPASS",
        "BASIC_AUTH",
        "Auth_Header",
    ],
)
def test_secret_looking_names(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["HOME", "USER", "PATH", "LANG", "ENGINE_DATA_DIR", "PWD"])
def test_ordinary_names(name: str) -> None:
    assert not looks_secret(name)


def test_values_of_secret_variables_are_masked() -> None:
    environ = {"SERVICE_TOKEN": "tok-9f8e7d", "DB_PASSWORD": "hunter22", "HOME": "/home/app"}
    text = "login with hunter22 failed (token tok-9f8e7d) in /home/app"
    assert (
        redact(text, environ=environ)
        == f"login with {REDACTED} failed (token {REDACTED}) in /home/app"
    )


def test_url_encoded_form_of_a_secret_is_masked() -> None:
    environ = {"DB_PASSWORD": "p@ss w/rd"}
    assert "p%40ss%20w%2Frd" not in redact("dsn=...p%40ss%20w%2Frd...", environ=environ)


def test_longest_secret_wins_when_one_contains_another() -> None:
    environ = {"A_TOKEN": "abcd", "B_TOKEN": "abcdefgh"}
    assert redact("x abcdefgh y", environ=environ) == f"x {REDACTED} y"


def test_short_values_and_flag_words_are_left_alone() -> None:
    environ = {"USE_AUTH": "true", "KEY_COUNT": "3", "TOKEN_TTL": "60", "PASS_THROUGH": "no"}
    text = "retry 3 of 60: true, no"
    assert redact(text, environ=environ) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:s3cr3t@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("postgresql+asyncpg://app:p@ss@db/shop", "postgresql+asyncpg://app:***@db/shop"),
        ("redis://:hunter22@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "failed: https://u:pw@example.com/x?y=1 (503)",
            "failed: https://u:***@example.com/x?y=1 (503)",
        ),
        ("https://user@example.com/path", "https://user@example.com/path"),
        ("https://example.com:8443/a@b", "https://example.com:8443/a@b"),
    ],
)
def test_passwords_in_urls(text: str, expected: str) -> None:
    assert redact(text, environ={}) == expected


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.SflKxwRJ", "eyJhbGciOi"),
        ("got 401 with bearer abc-DEF_123~+/=", "abc-DEF_123"),
        ("headers={'Authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("GET /api?access_token=zzz999&page=2", "zzz999"),
        ("password=opensesame retries=3", "opensesame"),
    ],
)
def test_tokens_and_credentials_in_text(text: str, secret: str) -> None:
    out = redact(text, environ={})
    assert secret not in out
    assert REDACTED in out


def test_ordinary_text_is_untouched() -> None:
    text = "subplan 'unit' failed: exit code 1 (authorization failed for user bob)"
    assert redact(text, environ={}) == text


def test_environment_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    redactor = Redactor()
    monkeypatch.setenv("LATE_SECRET", "set-after-start")
    assert redactor("value set-after-start") == f"value {REDACTED}"


def test_extra_literal_secrets() -> None:
    assert (
        redact("the pin is 4242-xyz", environ={}, secrets=["4242-xyz"]) == f"the pin is {REDACTED}"
    )


_SECRET_CHARS = string.ascii_letters + string.digits + "-_.:/@%+=!#$"


# Derandomized and without an example database: the same examples on every run.
DETERMINISTIC = settings(derandomize=True, database=None)


@DETERMINISTIC
@given(
    secret=st.text(alphabet=_SECRET_CHARS, min_size=4, max_size=40).filter(
        lambda s: s.lower() not in {"true", "false", "none", "null"}
    ),
    before=st.text(alphabet=_SECRET_CHARS + " \n", max_size=40),
    after=st.text(alphabet=_SECRET_CHARS + " \n", max_size=40),
)
def test_a_secret_never_survives(secret: str, before: str, after: str) -> None:
    out = redact(f"{before}{secret}{after}", environ={"MY_API_TOKEN": secret})
    assert secret not in out


@DETERMINISTIC
@given(st.text(max_size=200))
def test_redaction_is_idempotent(text: str) -> None:
    environ = {"X_TOKEN": "abcdef"}
    once = redact(text, environ=environ)
    assert redact(once, environ=environ) == once

"""Redaction of secrets from text the engine shows or stores (error messages, summaries).

This module owns ONLY the rule for what counts as a secret in free text and its replacement by
`***`. It never logs, never raises on odd input, and reads the environment when asked (at call
time, never at import), so a secret set after start-up is still caught.

What is masked:

- the value of every environment variable whose name looks secret (contains TOKEN, SECRET,
  PASSWORD, PASSWD, KEY, CREDENTIAL, PASS or AUTH, any case), and its URL-encoded form;
  values shorter than `MIN_SECRET_LENGTH` and flag words (`true`, `no`, ...) are left alone,
  because masking every `1` or `true` in a message would hide the message, not a secret;
- the password of a URL: `scheme://user:pass@host` -> `scheme://user:***@host`;
- bearer tokens (`Bearer abc.def`) and the credentials of an `Authorization:` header;
- `name=value` assignments whose name looks secret (`?access_token=...`, `password=...`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "looks_secret", "redact", "secret_values"]

#: What a secret is replaced with.
REDACTED = "***"
#: Environment values shorter than this are not treated as secrets (see the module docstring).
MIN_SECRET_LENGTH = 4

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|PASS|AUTH", re.IGNORECASE)
_FLAG_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "enabled"})

# scheme://user:password@host: the password runs to the LAST "@" before the path, so an
# unencoded "@" inside it is masked too.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)[^\s/?#]*(?=@)")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_AUTH_HEADER = re.compile(
    r"(?P<head>\b(?:Proxy-)?Authorization[\"']?\s*[:=]\s*[\"']?)(?:[A-Za-z]+\s+)?[^\s\"',;]+",
    re.IGNORECASE,
)
_ASSIGNMENT = re.compile(
    r"(?P<head>\b[\w.\-]*(?:token|secret|passw(?:or)?d|api[_\-]?key|credential)[\w.\-]*=)"
    r"[^\s&,;\"']+",
    re.IGNORECASE,
)
_PATTERNS = (_URL_PASSWORD, _BEARER, _AUTH_HEADER, _ASSIGNMENT)


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name suggests that its value is a secret."""
    return _SECRET_NAME.search(name) is not None


def secret_values(environ: Mapping[str, str]) -> frozenset[str]:
    """The values (and their URL-encoded forms) of the secret-looking variables of `environ`."""
    found: set[str] = set()
    for name, value in environ.items():
        if not looks_secret(name):
            continue
        candidate = value.strip()
        if len(candidate) < MIN_SECRET_LENGTH or candidate.lower() in _FLAG_WORDS:
            continue
        found.add(candidate)
        found.add(quote(candidate, safe=""))
    return frozenset(found)


@functools.lru_cache(maxsize=8)
def _values_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    # Longest first, so a secret that contains another is masked whole.
    ordered = sorted(values, key=lambda v: (-len(v), v))
    return re.compile("|".join(re.escape(v) for v in ordered))


class Redactor:
    """A callable `str -> str` that masks secrets.

    `environ=None` reads `os.environ` on every call; pass a mapping to pin it (tests, workers
    that received their environment). `secrets` are extra literal values to mask.
    """

    __slots__ = ("_environ", "_extra")

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, secrets: Iterable[str] = ()
    ) -> None:
        self._environ = environ
        self._extra = frozenset(s for s in secrets if s)

    def __call__(self, text: str) -> str:
        environ = os.environ if self._environ is None else self._environ
        values = secret_values(environ) | self._extra
        pattern = _values_pattern(values)
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        for rule in _PATTERNS:
            text = rule.sub(lambda m: f"{m.group('head')}{REDACTED}", text)
        return text


def redact(
    text: str, *, environ: Mapping[str, str] | None = None, secrets: Iterable[str] = ()
) -> str:
    """`text` with every secret masked (see the module docstring for what counts)."""
    return Redactor(environ, secrets=secrets)(text)

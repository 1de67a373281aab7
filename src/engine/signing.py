"""Signatures of job payloads: HMAC-SHA256 keyed by `ENGINE_SIGNING_KEY` (docs/security.md).

This module owns ONLY computing and checking a payload's signature. It never logs, stores or
shows the key, and its errors quote neither the key nor the signature it expected.

What is signed: a fixed context label, the job's id, and the payload without its `signature`
field as canonical JSON (sorted keys, no spaces, UTF-8) -- the exact bytes
`serialize_job_payload` writes. Binding the id means a signed payload copied into another job
row does not verify. The signature travels inside the payload, `"signature": "hmac-sha256:<64
hex digits>"`, so the payload stays version 1 and a worker without a key simply ignores it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from pydantic import SecretStr

from engine.errors import JobPayloadError, JobSignatureError

__all__ = [
    "MIN_KEY_LENGTH",
    "SIGNATURE_ALGORITHM",
    "SIGNATURE_FIELD",
    "SigningKey",
    "sign_payload",
    "verify_payload",
]

#: The payload field that holds the signature.
SIGNATURE_FIELD = "signature"
#: The scheme written before the hex digest.
SIGNATURE_ALGORITHM = "hmac-sha256"
#: Shortest key accepted (characters); generate one with `secrets.token_hex(32)`.
MIN_KEY_LENGTH = 16

#: A key as configured (`Settings.async_.signing_key`), or its text or bytes.
SigningKey = SecretStr | str | bytes

# Domain separation: a MAC of this engine's job payloads is never valid for anything else.
_CONTEXT = b"engine.job-payload.v1\x00"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_WHERE = "ENGINE_SIGNING_KEY is set on this worker"


def sign_payload(payload: str, job_id: str, key: SigningKey) -> str:
    """`payload` (JSON) with a `signature` field for the job `job_id`; any old one replaced."""
    data = _load(payload)
    data.pop(SIGNATURE_FIELD, None)
    data[SIGNATURE_FIELD] = f"{SIGNATURE_ALGORITHM}:{_digest(data, job_id, key)}"
    return _canonical(data).decode("utf-8", "surrogatepass")


def verify_payload(payload: str, job_id: str, key: SigningKey) -> None:
    """Return if `payload` carries a valid signature for the job `job_id` under `key`.

    `JobSignatureError` if it carries none, or a signature of another job, another payload or
    another key; `JobPayloadError` if it is not a JSON object at all.
    """
    data = _load(payload)
    signature = data.pop(SIGNATURE_FIELD, None)
    if signature is None:
        raise JobSignatureError(
            f"job payload signature is missing ({_WHERE}); not run: submit the job again "
            "with ENGINE_SIGNING_KEY set"
        )
    scheme, _, digest = signature.partition(":") if isinstance(signature, str) else ("", "", "")
    if scheme != SIGNATURE_ALGORITHM or _DIGEST.fullmatch(digest) is None:
        raise JobSignatureError(
            f"job payload signature is invalid ({_WHERE}): not of the form "
            f"{SIGNATURE_ALGORITHM}:<64 hex digits>; not run"
        )
    if not hmac.compare_digest(_digest(data, job_id, key), digest):
        raise JobSignatureError(
            f"job payload signature is invalid ({_WHERE}): the payload or job id was changed "
            "after it was signed, or it was signed with another key; not run"
        )


def _digest(data: dict[str, Any], job_id: str, key: SigningKey) -> str:
    message = _CONTEXT + job_id.encode("utf-8", "surrogatepass") + b"\x00" + _canonical(data)
    return hmac.new(_key_bytes(key), message, hashlib.sha256).hexdigest()


def _canonical(data: dict[str, Any]) -> bytes:
    # As `serialize_job_payload` writes it. `surrogatepass`: a crafted "\ud800" in a stored
    # payload must fail verification, not crash the worker.
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def _load(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobPayloadError(f"job payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobPayloadError("job payload must be a JSON object")
    return data


def _key_bytes(key: SigningKey) -> bytes:
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    return key.encode("utf-8") if isinstance(key, str) else key

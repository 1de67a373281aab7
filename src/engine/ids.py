"""ULID ids: 26 characters of Crockford base32, time-ordered by their first 10.

`new_ids(n)` makes a batch at C speed (one clock read, one `os.urandom`), for the thousands of
records a large run creates at once.
"""

from __future__ import annotations

import base64
import os

from ulid import ULID

_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id() -> str:
    return str(ULID())


def new_ids(count: int) -> list[str]:
    """`count` ULIDs sharing this millisecond's timestamp, each with 80 random bits."""
    if count <= 0:
        return []
    timestamp = str(ULID())[:10]
    # 10 random bytes are exactly 16 base32 characters; RFC 4648's alphabet maps onto
    # Crockford's in the same order, so `translate` keeps the values.
    randomness = base64.b32encode(os.urandom(10 * count)).translate(_CROCKFORD).decode()
    return [timestamp + randomness[i : i + 16] for i in range(0, 16 * count, 16)]

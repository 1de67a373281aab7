"""The ids every record gets: valid ULIDs, time-ordered, unique."""

from __future__ import annotations

import time

import pytest
from ulid import ULID

from engine.ids import new_id, new_ids

pytestmark = pytest.mark.timeout(30)


def test_an_id_is_a_ulid_of_this_millisecond() -> None:
    before = time.time()
    made = new_id()
    after = time.time()
    parsed = ULID.from_str(made)
    assert str(parsed) == made
    assert len(made) == 26
    assert before - 0.001 <= parsed.timestamp <= after + 0.001


def test_a_batch_shares_its_timestamp_and_nothing_else() -> None:
    batch = new_ids(1000)
    assert len(set(batch)) == 1000
    assert {i[:10] for i in batch} == {batch[0][:10]}
    assert all(str(ULID.from_str(i)) == i for i in batch)
    assert new_ids(0) == []


def test_ids_made_in_one_millisecond_still_increase() -> None:
    made = [new_id() for _ in range(2000)] + new_ids(500) + [new_id() for _ in range(10)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_made_later_sort_later() -> None:
    first = new_id()
    deadline = time.monotonic() + 5
    while (later := new_id())[:10] == first[:10]:  # the next millisecond
        assert time.monotonic() < deadline
    assert later > first

"""Outcomes a worker process keeps through a store outage (workers/late_outcomes.py), without services."""

from __future__ import annotations

import threading
import time

import redis

from workers import late_outcomes


def test_two_recorders_at_once_record_a_kept_outcome_once():
    """The thread and a task about to begin a batch both record kept outcomes: each is recorded
    once (twice, a failed attempt would be counted twice and its batch published twice)."""
    calls = []

    def record() -> None:
        calls.append(1)
        time.sleep(0.2)  # the second recorder arrives while this one records

    late_outcomes._pending.append(record)
    try:
        recorders = [threading.Thread(target=late_outcomes.record_kept) for _ in range(2)]
        for recorder in recorders:
            recorder.start()
        for recorder in recorders:
            recorder.join(10)
        assert calls == [1]
        assert late_outcomes._pending == []
    finally:
        late_outcomes._pending.clear()


def test_an_outcome_the_store_still_does_not_take_stays_kept():
    def record() -> None:
        raise redis.exceptions.ConnectionError("still down")

    late_outcomes._pending.append(record)
    try:
        late_outcomes.record_kept()
        assert late_outcomes._pending == [record]
    finally:
        late_outcomes._pending.clear()

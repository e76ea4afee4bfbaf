"""Status codes (app/model/status.py): the precedence of DESIGN.md, and which codes are final."""

from __future__ import annotations

import itertools
import json

import pytest

from app.model import status

# DESIGN.md: stopped > timed_out > worker_oom > worker_error > enqueue_failed > unexpected_error >
# completed_with_failures > succeeded > paused > running > enqueuing (paused: Batchery's own, not final)
STRONGEST_FIRST = [
    status.STOPPED,
    status.TIMED_OUT,
    status.WORKER_OOM,
    status.WORKER_ERROR,
    status.ENQUEUE_FAILED,
    status.UNEXPECTED_ERROR,
    status.COMPLETED_WITH_FAILURES,
    status.SUCCEEDED,
    status.PAUSED,
    status.RUNNING,
    status.ENQUEUING,
]


@pytest.mark.parametrize(("higher", "lower"), list(itertools.pairwise(STRONGEST_FIRST)))
def test_strongest_follows_the_design_precedence_for_each_adjacent_pair(higher, lower):
    assert status.strongest(higher, lower) == higher
    assert status.strongest(lower, higher) == higher


def test_strongest_of_all_statuses_is_stopped_and_of_one_is_itself():
    assert status.strongest(*reversed(STRONGEST_FIRST)) == status.STOPPED
    assert status.strongest(status.RUNNING, status.ENQUEUING, status.SUCCEEDED) == status.SUCCEEDED
    for code in STRONGEST_FIRST:
        assert status.strongest(code) == code


def test_only_enqueuing_running_and_paused_are_not_final():
    not_final = {status.ENQUEUING, status.RUNNING, status.PAUSED}
    assert {code for code in STRONGEST_FIRST if not status.is_final(code)} == not_final
    assert set(STRONGEST_FIRST) == set(status.PRECEDENCE)


def test_every_status_has_a_place_in_the_precedence_and_reads_as_its_code():
    assert sorted(status.PRECEDENCE) == sorted(status.Status)
    assert json.dumps({"status": status.Status.STOPPED}) == '{"status": "status_stopped"}'
    assert f"{status.RUNNING}" == "status_running"

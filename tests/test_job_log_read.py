"""A job's log is read from where its reader left off, not whole (app/store/lua/job_log_read.lua)."""

from __future__ import annotations

import json

import pytest

from app.store import keys
from app.store.joblog import JobLog
from tests.services import RedisServer

LINES = 100_000


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A redis-server of this module's own: what it sends is this module's reads alone."""
    server = RedisServer(tmp_path_factory.mktemp("job-log-read"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def long_log(own_redis) -> tuple[JobLog, str]:
    """A job log of 100,000 lines of about 100 bytes each."""
    job_log = JobLog(own_redis.client, max_lines=LINES)
    for start in range(0, LINES, 1000):
        job_log.write_lines("long", [{"message": f"line {n} " + "x" * 60} for n in range(start, start + 1000)])
    return job_log, "long"


def sent_bytes(server: RedisServer) -> int:
    return int(server.client.info("stats")["total_net_output_bytes"])


def test_a_read_from_near_the_end_fetches_only_the_lines_after_it(own_redis, long_log):
    job_log, job_id = long_log
    whole = sum(len(line) for line in own_redis.client.lrange(keys.job_log(job_id), 0, -1))
    before = sent_bytes(own_redis)
    lines = job_log.read(job_id, after=LINES - 10)
    sent = sent_bytes(own_redis) - before
    print(f"\nthe last 10 lines of a {LINES:,}-line log ({whole:,} bytes): Redis sent {sent:,} bytes")
    assert [line["seq"] for line in lines] == list(range(LINES - 9, LINES + 1))
    assert lines[-1]["message"].startswith(f"line {LINES - 1} ")
    assert sent < 20_000  # ten lines and an INFO answer, not the 9 MB before them


def test_reads_page_through_the_log_in_order(long_log):
    job_log, job_id = long_log
    assert [line["seq"] for line in job_log.read(job_id, after=0, limit=3)] == [1, 2, 3]
    assert [line["seq"] for line in job_log.read(job_id, after=500, limit=2)] == [501, 502]
    assert job_log.read(job_id, after=LINES) == []
    assert job_log.read("no-such-job", after=0) == []


def test_a_trimmed_log_is_read_from_its_first_kept_line(own_redis):
    job_log = JobLog(own_redis.client, max_lines=5)
    job_log.write_lines("trimmed", [{"message": str(n)} for n in range(12)])  # keeps 8..12
    assert [line["seq"] for line in job_log.read("trimmed", after=0)] == [8, 9, 10, 11, 12]
    assert [line["seq"] for line in job_log.read("trimmed", after=10)] == [11, 12]


def test_lines_whose_numbers_do_not_run_on_are_still_found(own_redis):
    key = keys.job_log("gaps")
    own_redis.client.rpush(key, *(json.dumps({"seq": seq, "message": "m"}) for seq in (1, 2, 5, 9, 10)))
    job_log = JobLog(own_redis.client)
    assert [line["seq"] for line in job_log.read("gaps", after=2)] == [5, 9, 10]
    assert [line["seq"] for line in job_log.read("gaps", after=6, limit=1)] == [9]
    assert job_log.read("gaps", after=10) == []

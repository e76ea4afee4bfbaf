"""A pool process's record in a job's `procs` hash, written by the store's scripts and read by
the status (app/model/wire.py), on a real Redis."""

from __future__ import annotations

import pytest
import redis

from app.model.wire import INITIALIZING, PROCESS_STATES, RUNNING, parse_process_record, process_name, process_record
from app.store import keys
from app.store.job_store import JobStore
from tests.services import RedisServer
from tests.test_store import new_job


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path)
    yield JobStore(redis.Redis.from_url(server.url))
    server.stop()


@pytest.mark.parametrize("state", PROCESS_STATES)
def test_a_record_reads_back_as_the_state_and_batch_written(state):
    assert parse_process_record(process_record(state, "batch-7")) == (state, "batch-7")


def test_a_process_name_holds_host_pid_and_token():
    assert process_name("host-a", 4242, "0f3c9a1b") == "host-a:4242:0f3c9a1b"


@pytest.mark.parametrize(("ready", "state"), [(False, INITIALIZING), (True, RUNNING)])
def test_the_store_writes_the_records_the_codec_reads(store, ready, state):
    """BEGIN writes the record in Lua: it must be the codec's format, or the status miscounts."""
    spec = new_job(store, 1, workers=1)
    store.begin(spec, "0", "host:1:token", 1001.0, ready=ready)
    raw = store.redis.hget(keys.procs(spec["job_id"]), "host:1:token").decode()
    assert parse_process_record(raw) == (state, "0")

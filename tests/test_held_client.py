"""Workers' script calls on a held connection (app/store/held_client.py, app/store/scripts.py), on a real Redis."""

from __future__ import annotations

import multiprocessing
import signal
import threading

import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.store.held_client import HeldConnectionClient
from app.store.scripts import Call, run_together
from tests.services import RedisServer, wait_for


@pytest.fixture
def own_redis(tmp_path):
    """A server of this test's own, free to restart."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def held(own_redis) -> HeldConnectionClient:
    # as a worker's: retried through an outage of a few seconds
    return HeldConnectionClient.from_url(own_redis.url, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 20))


def connection_id(client: HeldConnectionClient) -> int:
    return client.execute_held("CLIENT", "ID")


def test_each_thread_keeps_one_connection(held):
    first = connection_id(held)
    assert connection_id(held) == first
    seen = []
    thread = threading.Thread(target=lambda: seen.append(connection_id(held)))
    thread.start()
    thread.join()
    assert seen and seen[0] != first  # another thread: a connection of its own
    assert connection_id(held) == first


def _child_connection_id(held: HeldConnectionClient, queue) -> None:
    queue.put(connection_id(held))


def test_a_forked_process_opens_its_own_connection(held):
    parent = connection_id(held)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_connection_id, args=(held, queue))
    child.start()
    try:
        assert queue.get(timeout=30) != parent
    finally:
        child.join(30)
    assert connection_id(held) == parent


def test_a_redis_restart_is_retried_through(held, own_redis):
    script = Call(held.register_script("return redis.call('INCR', KEYS[1])"), ["counter"], [])
    assert script.run(held) == 1
    own_redis.restart()  # the held connection's socket is now dead, and Redis lost its scripts
    assert script.run(held) == 1  # reconnected, script loaded again (no persistence: counter anew)
    assert run_together(held, [script, script]) == [2, 3]


def test_a_call_made_while_redis_is_down_waits_for_it(held, own_redis):
    script = Call(held.register_script("return redis.call('INCR', KEYS[1])"), ["counter"], [])
    assert script.run(held) == 1
    assert held._connection().retry.get_retries() == 20  # the client's retries, not redis-py's default
    restarting = threading.Thread(target=own_redis.restart, kwargs={"down": 1.0})
    restarting.start()
    try:
        wait_for(lambda: own_redis.process.poll() is not None, timeout=30, what="redis-server to stop")
        assert script.run(held) == 1  # retried through the second it was down
    finally:
        restarting.join(60)


def test_error_replies_come_back_in_place_and_the_rest_still_run(held):
    ok = Call(held.register_script("return ARGV[1]"), [], ["fine"])
    failing = Call(held.register_script("return redis.error_reply('no such thing')"), [], [])
    first, second, third = run_together(held, [ok, failing, ok])
    assert (first, third) == (b"fine", b"fine")
    assert isinstance(second, redis.ResponseError) and "no such thing" in str(second)
    with pytest.raises(redis.ResponseError, match="no such thing"):
        failing.run(held)
    assert ok.run(held) == b"fine"  # the connection is still in step after an error reply


def test_scripts_flushed_from_redis_are_loaded_again(held):
    calls = [Call(held.register_script(f"return {n}"), [], []) for n in (1, 2)]
    assert run_together(held, calls) == [1, 2]
    held.script_flush()
    assert run_together(held, calls) == [1, 2]
    held.script_flush()
    assert calls[0].run(held) == 1


def test_a_plain_client_gives_the_same_replies(own_redis, held):
    plain = redis.Redis.from_url(own_redis.url)
    call = Call(plain.register_script("return {KEYS[1], ARGV[1]}"), ["k"], ["v"])
    assert call.run(plain) == call.run(held) == [b"k", b"v"]
    assert run_together(plain, [call]) == run_together(held, [call])


class Interrupted(Exception):
    """What a signal handler (a time limit, say) raises in the middle of a call."""


def test_a_call_interrupted_before_its_reply_leaves_no_reply_behind(held):
    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Interrupted):
            held.execute_held("BLPOP", "nothing-comes", 5)  # its reply would come in 5 s
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert held.execute_held("ECHO", "the next reply") == b"the next reply"  # not BLPOP's

"""Each kombu patch installs once, and only on the kombu version it was written for (workers/kombu_patches)."""

from __future__ import annotations

import importlib

import pytest
from kombu.transport import SQS
from kombu.transport import redis as kombu_redis

from workers.kombu_patches import MARK, WRITTEN_FOR, UnsupportedKombu, check_kombu, install_once, release

PATCHES = ["kept_client", "redis_restore", "sqs_receive", "sqs_restore"]
SUPPORTED = ".".join(map(str, WRITTEN_FOR))


def patch_module(name: str):
    return importlib.import_module(f"workers.kombu_patches.{name}")


@pytest.mark.parametrize(
    ("version", "expected"),
    [("5.7.0", (5, 7)), ("5.7.12", (5, 7)), ("5.8.0rc1", (5, 8)), ("6.0", (6, 0)), ("dev", None), ("5", None)],
)
def test_a_version_string_gives_its_major_and_minor_release(version, expected):
    assert release(version) == expected


@pytest.mark.parametrize("version", [f"{SUPPORTED}.0", f"{SUPPORTED}.9"])
def test_every_patch_release_of_the_version_written_for_is_accepted(version):
    check_kombu("a patch", "an issue", version)


@pytest.mark.parametrize("version", ["5.6.2", "5.8.0", "6.0.0", "unknown"])
def test_another_kombu_version_is_refused_with_what_to_do(version):
    with pytest.raises(UnsupportedKombu) as raised:
        check_kombu("workers.kombu_patches.sqs_restore", "celery/kombu#1391", version)
    message = str(raised.value)
    assert f"written for kombu {SUPPORTED}.x" in message
    assert f"kombu {version} is installed" in message
    assert "celery/kombu#1391" in message  # the upstream issue to check
    assert f"kombu~={SUPPORTED}.0" in message  # or the version to install


@pytest.mark.parametrize("name", PATCHES)
def test_no_patch_installs_on_a_kombu_it_was_not_written_for(name, monkeypatch):
    owners = {SQS.Channel: ["_on_messages_ready", "_restore"], kombu_redis.Channel: ["conn_or_acquire"]}
    owners[kombu_redis.QoS] = ["restore_unacked", "ack", "reject"]
    for owner, methods in owners.items():
        for method in methods:  # each as kombu has it, so that a refused install would show
            monkeypatch.setattr(owner, method, lambda *args: "kombu's own")
    with pytest.raises(UnsupportedKombu):
        patch_module(name).install(version="5.8.0")
    assert all(getattr(owner, m)() == "kombu's own" for owner, methods in owners.items() for m in methods)


@pytest.mark.parametrize("name", PATCHES)
def test_each_patch_names_the_upstream_issue_or_says_there_is_none(name):
    module = patch_module(name)
    assert "Upstream:" in (module.__doc__ or "")
    assert module.UPSTREAM


def test_a_patch_wraps_the_original_once():
    class Owner:
        def method(self):
            return "original"

    def wrap(original):
        return lambda self: f"wrapped {original(self)}"

    install_once(Owner, "method", wrap, "a patch", "an issue", f"{SUPPORTED}.0")
    install_once(Owner, "method", wrap, "a patch", "an issue", f"{SUPPORTED}.0")
    assert Owner().method() == "wrapped original"
    assert getattr(Owner.method, MARK) == "a patch"


class FakeChannel:
    """What the poll timer of sqs_receive touches on kombu's SQS Channel: polls are recorded, not sent."""

    def __init__(self):
        self._active_queues = ["q"]
        self.sent: list = []  # the callbacks of the polls sent
        self.looped: list = []  # the queues whose polling went on
        self.timers: list = []

        class Hub:
            def call_repeatedly(hub, seconds, fn, *args):
                self.timers.append((fn, args))

        class QoS:
            def can_consume(qos):
                return True

        self.hub, self.qos = Hub(), QoS()

    def _get_bulk_async(self, queue, callback):
        self.sent.append(callback)

    def _loop1(self, queue, messages_fetched=None):
        self.looped.append(queue)


def test_a_poll_sqs_never_answers_is_sent_again_and_its_late_reply_dropped(monkeypatch):
    from workers.kombu_patches import sqs_receive

    channel = FakeChannel()
    schedule = sqs_receive._timed(lambda self, queue: None)
    channel._schedule_queue = lambda queue: schedule(channel, queue)  # the patched method, as installed
    clock = [1000.0]
    monkeypatch.setattr(sqs_receive.time, "monotonic", lambda: clock[0])
    schedule(channel, "q")
    (check, args), = channel.timers
    check(*args)
    assert len(channel.sent) == 1  # not yet taken for lost
    clock[0] += sqs_receive.STALLED_SECONDS
    check(*args)
    assert len(channel.sent) == 2  # polled again
    channel.sent[0]([])  # the lost poll's reply comes after all: dropped
    assert channel.looped == []
    channel.sent[1]([])  # the new poll's reply: polling goes on, once
    assert channel.looped == ["q"]

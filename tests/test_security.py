"""Hostile messages and leaked credentials: a pickled task is refused unread; no status, log or error shows a secret."""

from __future__ import annotations

import pathlib
import pickle
import time
import uuid

from app.broker import RUN_BATCH, make_celery


class TouchOnLoad:
    """Unpickled, this creates `path`: what an attacker's pickle would do (with worse than touch)."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path(self.path).touch, ())


def log_after(path: pathlib.Path, offset: int) -> str:
    with path.open(errors="replace") as log:
        log.seek(offset)
        return log.read()


def test_the_payload_is_live_when_unpickled(tmp_path):
    # The test below means something only if loading this payload does run code.
    marker = tmp_path / "loaded"
    pickle.loads(pickle.dumps(TouchOnLoad(marker)))
    assert marker.exists()


def test_a_pickled_task_message_is_refused_and_never_loaded(settings, worker, tmp_path):
    """On the Redis broker (the suite's default): the worker's `accept_content=["json"]` refuses it."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    publisher = make_celery(settings)
    publisher.conf.accept_content = ["json", "pickle"]  # the attacker's publisher only
    offset = worker.log_path.stat().st_size
    publisher.send_task(
        RUN_BATCH,
        args=("job-pickle", "0", TouchOnLoad(marker)),
        queue=settings.queue,
        serializer="pickle",
    )
    deadline = time.monotonic() + 30
    refused = ""
    while time.monotonic() < deadline:
        text = log_after(worker.log_path, offset)
        if "Refusing to deserialize untrusted content" in text:
            refused = text
            break
        time.sleep(0.1)
    assert refused, f"the worker did not refuse the pickled message:\n{log_after(worker.log_path, offset)}"
    assert "of type pickle (application/x-python-serialize)" in refused
    assert "discarded" in refused  # dropped, not requeued for ever
    time.sleep(0.5)  # a load would have run by now
    assert not marker.exists()
    assert worker.process.poll() is None  # the worker lives on
    publisher.close()

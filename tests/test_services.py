"""How the API and the workers wire their services (app/jobs/services.py)."""

from __future__ import annotations

import dataclasses

from app.config import Settings
from app.jobs.services import direct_queue


def test_the_store_pushes_batch_messages_only_when_the_broker_is_its_own_redis():
    same = Settings(redis_url="redis://h:6379/0", queue="q")
    assert direct_queue(same) == "q"
    assert direct_queue(dataclasses.replace(same, broker_url="redis://h:6379/0")) == "q"
    assert direct_queue(dataclasses.replace(same, broker_url="redis://h:6379/1")) == ""  # another database
    assert direct_queue(dataclasses.replace(same, broker_url="redis://other:6379/0")) == ""
    assert direct_queue(dataclasses.replace(same, broker_url="sqs://")) == ""

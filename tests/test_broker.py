"""The broker's pure rules (app/broker/): the dead-letter queue's name from its ARN, the Celery settings."""

from __future__ import annotations

import pytest

from app.broker.config import celery_config
from app.broker.dead_letters import queue_name
from app.config import Settings


@pytest.mark.parametrize(
    ("arn", "name"),
    [
        ("arn:aws:sqs:us-west-2:123456789:failed.fifo", "failed.fifo"),
        ("arn:aws:sqs:eu-west-1:000000000000:dead-letters", "dead-letters"),
        ("just-a-name", "just-a-name"),
    ],
)
def test_dead_letter_queue_name_is_the_last_part_of_the_arn(arn, name):
    assert queue_name(arn) == name


def test_task_events_are_off_unless_asked_for():
    assert celery_config(Settings())["worker_send_task_events"] is False
    assert celery_config(Settings.from_env({"BATCHERY_TASK_EVENTS": "1"}))["worker_send_task_events"] is True
    assert celery_config(Settings.from_env({"BATCHERY_TASK_EVENTS": "no"}))["worker_send_task_events"] is False

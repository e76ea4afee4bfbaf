"""The guard on kombu's SQS transport (workers/kombu_patches/sqs_restore.py), on kombu's real Channel class."""

from __future__ import annotations

import botocore.exceptions
import pytest
from kombu.transport import SQS

from workers.kombu_patches import sqs_restore


def client_error(code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "x"}}, "ChangeMessageVisibility")


@pytest.fixture
def restore_raising(monkeypatch):
    """kombu's Channel._restore replaced by one that raises, then guarded."""

    def make(error: Exception):
        def failing_restore(self, message, *args, **kwargs):
            raise error

        monkeypatch.setattr(SQS.Channel, "_restore", failing_restore)
        sqs_restore.install()
        return SQS.Channel._restore

    return make


def test_a_message_already_delivered_again_does_not_stop_the_worker(restore_raising):
    restore = restore_raising(client_error("ReceiptHandleIsInvalid"))
    assert restore(object(), object()) is None


def test_other_sqs_errors_still_raise(restore_raising):
    restore = restore_raising(client_error("AccessDenied"))
    with pytest.raises(botocore.exceptions.ClientError):
        restore(object(), object())


def test_install_is_idempotent(restore_raising):
    restore = restore_raising(client_error("ReceiptHandleIsInvalid"))
    sqs_restore.install()
    assert SQS.Channel._restore is restore

"""The one way Batchery builds an SQS client (the broker's queue, dead-letter queues, visibility)."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config


def sqs_client(region: str | None = None, config: botocore.config.Config | None = None) -> Any:
    """A new SQS client on a session of its own (boto3's default session is not thread-safe), with
    boto3's usual credentials, endpoint (`AWS_ENDPOINT_URL_SQS`) and, unless `region` is given, region."""
    return boto3.session.Session().client("sqs", region_name=region, config=config)

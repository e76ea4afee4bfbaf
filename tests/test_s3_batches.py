"""S3 inputs turned into batches by the enqueuer's generators, against a real moto server (no worker)."""

from __future__ import annotations

import json
import logging
import uuid

import boto3

from app.sources.batches import START, payload, source_batches
from tests.test_s3 import ndjson, put


def test_batches_closed_early_by_size_say_so_once_in_the_log(moto, caplog):
    """A predictor expecting len(payload) == batch_size was fed smaller batches, and nothing said why."""
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    put(bucket, {"big/a.jsonl": ndjson([{"n": n, "pad": "x" * 100_000} for n in range(7)])})
    source = {
        "kind": "delimited_files",
        "s3_paths": [f"s3://{bucket}/big/"],
        "includes": [],
        "excludes": [],
        "batch_size": 10,
    }
    with caplog.at_level(logging.INFO, logger="app.sources.batches"):
        bodies = [body for body, _ in source_batches(source, START)]
    assert [len(payload(body)) for body in bodies] == [2, 2, 2, 1]
    assert [item["n"] for body in bodies for item in payload(body)] == list(range(7))
    said = [record.getMessage() for record in caplog.records if record.name == "app.sources.batches"]
    assert said == [
        "batch 0 holds 2 items, not batch_size 10: a batch must stay under 256 KiB, so batches of items this "
        "large are closed early (this is said once)"
    ]
    assert json.loads(bodies[0])["s3_ranges"][0][:2] == [bucket, "big/a.jsonl"]

"""Predictions collected: where a job's `output` goes, how `predict`'s return value is written there,
and how the files (or the stored lines) are read back.

A job submitted with `"output": {"s3_path": "s3://bucket/prefix/"}` has each batch's predictions
written as NDJSON to `<prefix>/<job_id>/<batch_id>.ndjson`; with `"output": {"store": "redis"}`,
kept in the job store, a hash of batch id -> NDJSON lines per job, at most
`BATCHERY_OUTPUT_STORE_BYTES` in all. The worker writes a batch's output after `predict` returns
and before its outcome is counted, so a batch counted as succeeded has its output; a failed
attempt writes nothing, and a retried batch overwrites the same file (the last successful attempt
wins).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import redis

from app.errors import InvalidRequest
from app.sources import s3
from app.store import keys

NDJSON = "application/x-ndjson"
# A page of the output route's file list (ListObjectsV2's own page size).
FILES_PER_PAGE = 1000
# S3 keys are at most 1024 bytes; the job id and batch id take up to ~100 of them.
MAX_PREFIX_BYTES = 900
# A bucket name as S3 takes it (3 to 63 lowercase letters, digits, dots and hyphens).
BUCKET_NAME = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"


class OutputError(Exception):
    """A batch's output cannot be written (not JSON, over the store's cap, S3 refused); the message
    says which and what to do. The batch's attempt fails with it."""


@dataclass(frozen=True)
class S3Destination:
    """Where a job's output files go: `s3://<bucket>/<prefix><job_id>/<batch_id>.ndjson`."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def of(cls, s3_path: str) -> S3Destination:
        """The destination an `s3_path` names; a path not ending in `/` is a folder all the same.
        Raises ValueError for a path that is not `s3://bucket/...`."""
        bucket, prefix = s3.parse_path(s3_path)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(bucket, prefix)

    def job_prefix(self, job_id: str) -> str:
        """The key prefix of a job's files."""
        return f"{self.prefix}{job_id}/"

    def key(self, job_id: str, batch_id: str) -> str:
        """The key of a batch's file."""
        return f"{self.job_prefix(job_id)}{batch_id}.ndjson"


def check_submission(submission: dict) -> None:
    """Check a submission's `output` (already of the right shape): its S3 bucket exists (a HEAD).
    Raises InvalidRequest naming the path and what S3 answered."""
    output = submission.get("output")
    if not output or "s3_path" not in output:
        return
    destination = S3Destination.of(output["s3_path"])
    try:
        s3.client().head_bucket(Bucket=destination.bucket)
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            raise InvalidRequest(
                f"output.s3_path: bucket {destination.bucket} does not exist: create it, or name another"
            ) from None
        if code not in ("403", "AccessDenied"):  # a role may write objects without reading the bucket
            raise InvalidRequest(f"output.s3_path: cannot check bucket {destination.bucket}: {code} {err}") from None
    except botocore.exceptions.BotoCoreError as err:
        raise InvalidRequest(f"output.s3_path: cannot check bucket {destination.bucket}: {err}") from None


def ndjson_lines(batch_id: str, items: list, prediction: Any) -> bytes:
    """`predict`'s return value as NDJSON: a list with one entry per item is one line per item
    (`batch_id`, `index`, `prediction`); any other JSON value is one line (`batch_id`,
    `prediction`). Raises OutputError for a value JSON cannot hold."""
    try:
        # each line written around its encoded entry: a third cheaper than a dict and a dumps per line
        head = '{"batch_id":' + _encode(batch_id)
        if isinstance(prediction, list) and len(prediction) == len(items):
            text = "".join(
                f'{head},"index":{index},"prediction":{_encode(entry)}}}\n' for index, entry in enumerate(prediction)
            )
        else:
            text = f'{head},"prediction":{_encode(prediction)}}}\n'
    except (TypeError, ValueError) as err:
        raise OutputError(
            f"predict's return value is not JSON ({err}): return lists, dicts, strings, numbers, booleans "
            "or None (a numpy array: .tolist())"
        ) from None
    return text.encode()


# Compact, and NaN or Infinity refused: JSON has neither, and a reader of the files would choke on them.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def write_s3(destination: S3Destination, job_id: str, batch_id: str, body: bytes) -> str:
    """Write a batch's NDJSON to its file (over an earlier attempt's); its `s3://` path. Raises
    OutputError with S3's answer."""
    key = destination.key(job_id, batch_id)
    path = f"s3://{destination.bucket}/{key}"
    try:
        s3.client().put_object(Bucket=destination.bucket, Key=key, Body=body, ContentType=NDJSON)
    except botocore.exceptions.ClientError as err:
        error = err.response.get("Error", {})
        raise OutputError(f"cannot write {path}: {error.get('Code', '')} {error.get('Message', '')}".strip()) from None
    except botocore.exceptions.BotoCoreError as err:
        raise OutputError(f"cannot write {path}: {err}") from None
    return path


def list_files(destination: S3Destination, job_id: str, after: str = "") -> tuple[list[dict], str | None]:
    """A page of a job's output files, in key order, after batch `after`; and the batch id to ask
    for the next page after (None on the last). Raises s3.S3Error."""
    prefix = destination.job_prefix(job_id)
    kwargs: dict = {"Bucket": destination.bucket, "Prefix": prefix, "MaxKeys": FILES_PER_PAGE}
    if after:
        kwargs["StartAfter"] = destination.key(job_id, after)
    with s3.translated_errors(f"s3://{destination.bucket}/{prefix}"):
        page = s3.client().list_objects_v2(**kwargs)
    files = [
        {
            "path": f"s3://{destination.bucket}/{item['Key']}",
            "batch_id": item["Key"][len(prefix) :].removesuffix(".ndjson"),
            "size": item["Size"],
        }
        for item in page.get("Contents", [])
    ]
    more = page.get("IsTruncated") and files
    return files, files[-1]["batch_id"] if more else None


class OutputStore:
    """The NDJSON of jobs with `output: {store: redis}`: one hash per job (batch id -> its lines),
    and its size in bytes beside it, kept as long as the job."""

    def __init__(self, client: redis.Redis, cap_bytes: int):
        self.redis = client
        self.cap_bytes = cap_bytes

    def put(self, job_id: str, batch_id: str, body: bytes) -> None:
        """Keep a batch's lines (over an earlier attempt's). Raises OutputError when the job's output
        would go over the cap."""
        lines, size = keys.job_output(job_id), keys.job_output_bytes(job_id)

        # WATCHed, so that the size counted and the cap checked stay exact with batches writing at once
        def write(pipe: Any) -> None:
            earlier = int(pipe.hstrlen(lines, batch_id))
            total = int(pipe.get(size) or 0) - earlier + len(body)
            if total > self.cap_bytes:
                raise OutputError(
                    f"the job's output in the store would reach {total:,} bytes, over its cap of {self.cap_bytes:,} "
                    "(BATCHERY_OUTPUT_STORE_BYTES): submit the job with output.s3_path instead"
                )
            pipe.multi()
            pipe.hset(lines, batch_id, body)
            pipe.set(size, total)

        self.redis.transaction(write, lines, size)

    def lines(self, job_id: str, chunk: int = 100) -> Iterator[bytes]:
        """A job's stored NDJSON, batch by batch in batch order (numbers first, by value)."""
        batch_ids = sorted((_text(b) for b in self.redis.hkeys(keys.job_output(job_id))), key=_batch_order)
        for start in range(0, len(batch_ids), chunk):
            for body in self.redis.hmget(keys.job_output(job_id), batch_ids[start : start + chunk]):
                if body is not None:
                    yield body if isinstance(body, bytes) else body.encode()

    def stored_bytes(self, job_id: str) -> int:
        """The bytes of a job's stored output."""
        return int(self.redis.get(keys.job_output_bytes(job_id)) or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _batch_order(batch_id: str) -> tuple[int, int, str]:
    return (0, int(batch_id), "") if batch_id.isdigit() else (1, 0, batch_id)

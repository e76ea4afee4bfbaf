"""Listing S3 objects under prefixes, filtered by globs, and reading byte ranges of them.

The client is boto3's, built the standard way: credentials from the usual chain and the
endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, so AWS, MinIO and a local test server
all work unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import boto3
import botocore.exceptions
from botocore.config import Config

from app.sources.globs import GlobError, compile_glob, selects

S3_PATH = re.compile(r"^s3://([^/]+)(?:/(.*))?$", re.DOTALL)


class S3Error(Exception):
    """S3 could not be read (no such bucket, access denied, no endpoint); the message says which."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str
    size: int
    etag: str = ""  # the version listed: reads of its bytes later ask for that one (If-Match)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@lru_cache(maxsize=1)
def client():
    """The process's S3 client (thread-safe; boto3 honours AWS_ENDPOINT_URL_S3 itself)."""
    return boto3.session.Session().client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def parse_path(path: str) -> tuple[str, str]:
    """(bucket, prefix) of an `s3://bucket/prefix` path; raises ValueError."""
    match = S3_PATH.match(path)
    if not match or not match.group(1):
        raise ValueError(f"{path!r} is not an S3 path: write s3://<bucket>/<prefix or key>")
    return match.group(1), match.group(2) or ""


def check_globs(patterns: list[str]) -> None:
    """Raise ValueError naming the first pattern that does not compile."""
    for pattern in patterns:
        try:
            compile_glob(pattern)
        except GlobError as err:
            raise ValueError(f"glob {pattern!r} does not compile: {err}") from None


def distinct_prefixes(paths: list[str]) -> list[tuple[str, str]]:
    """The paths' (bucket, prefix) pairs, in order, without repeats or prefixes another one covers.

    What remains lists disjoint sets of keys, so no object is listed twice.
    """
    pairs = list(dict.fromkeys(parse_path(p) for p in paths))
    # Sorted, the paths under a prefix follow it in one run: each is covered by the last one kept,
    # or by none (n log n; comparing every pair took 19 s for a manifest of 10,000 keys).
    kept: set[tuple[str, str]] = set()
    last: tuple[str, str] | None = None
    for bucket, prefix in sorted(pairs):
        if last is None or last[0] != bucket or not prefix.startswith(last[1]):
            kept.add((bucket, prefix))
            last = (bucket, prefix)
    return [pair for pair in pairs if pair in kept]


def list_objects(bucket: str, prefix: str, start_after: str = "") -> Iterator[S3Object]:
    """Every object under a prefix in key order (all pages), skipping `folder/` markers."""
    pages = client().get_paginator("list_objects_v2")
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    with translated_errors(f"s3://{bucket}/{prefix}"):
        for page in pages.paginate(**kwargs):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield S3Object(bucket, item["Key"], item["Size"], item.get("ETag", ""))


def matching(paths: list[str], includes: list[str], excludes: list[str]) -> Iterator[tuple[int, S3Object]]:
    """(prefix index, object) for every object the paths and globs select, in listing order."""
    for index, (bucket, prefix) in enumerate(distinct_prefixes(paths)):
        for obj in list_objects(bucket, prefix):
            if selects(obj.url, includes, excludes):
                yield index, obj


def read_range(bucket: str, key: str, start: int, end: int, etag: str = "") -> bytes:
    """Bytes [start, end) of an object, of the version `etag` if given; raises S3Error (one that
    says the object changed if it no longer has that ETag)."""
    with translated_errors(f"s3://{bucket}/{key}"):
        body = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **_version(etag))["Body"]
        return body.read()


def stream(bucket: str, key: str, start: int = 0, etag: str = "", chunk: int = 1 << 20) -> Iterator[bytes]:
    """An object's bytes from `start` on, a chunk at a time (memory stays flat for any size), of
    the version `etag` if given; raises S3Error."""
    with translated_errors(f"s3://{bucket}/{key}"):
        kwargs = {"Range": f"bytes={start}-"} if start else {}
        body = client().get_object(Bucket=bucket, Key=key, **kwargs, **_version(etag))["Body"]
        yield from body.iter_chunks(chunk)


def _version(etag: str) -> dict:
    # A batch of `delimited_files` is byte ranges, read again when it runs: an object overwritten
    # in between gave the batch other items, or cut values (silently mixed data). S3 answers 412
    # to a read whose If-Match is no longer the object's ETag.
    return {"IfMatch": etag} if etag else {}


@contextmanager
def translated_errors(where: str) -> Iterator[None]:
    """Turn boto3's errors into S3Error with a message a user can act on."""
    try:
        yield
    except botocore.exceptions.ClientError as err:
        raise S3Error(_client_error(err, where)) from None
    except botocore.exceptions.NoCredentialsError:
        raise S3Error(f"no AWS credentials to read {where}: set them the usual boto3 way") from None
    except botocore.exceptions.BotoCoreError as err:
        raise S3Error(f"cannot read {where}: {err}") from None


def _client_error(err: botocore.exceptions.ClientError, where: str) -> str:
    code = err.response.get("Error", {}).get("Code", "")
    bucket = where.split("/")[2]
    if code == "NoSuchBucket":
        return f"bucket {bucket} does not exist (reading {where})"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied reading {where} ({code}): check the credentials and the bucket policy"
    if code in ("NoSuchKey", "404"):
        return f"{where} does not exist"
    if code in ("PreconditionFailed", "412"):
        return (
            f"{where} changed since the job listed it: the items this batch held are no longer there "
            "(submit a job again to read the new contents)"
        )
    return f"cannot read {where}: {code} {err.response.get('Error', {}).get('Message', '')}".strip()

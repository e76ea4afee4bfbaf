"""Turning S3 inputs into batches, resumable from a cursor saved with every chunk of batches.

A batch body is what the worker receives: for `file_path_lister` the JSON list of `s3://` paths
(the payload itself); for `delimited_files` `{"s3_ranges": [[bucket, key, start, end, etag], ...]}`,
byte ranges of the objects that the worker reads back, of the version listed (its ETag), and
parses into the payload. A cursor says where the next batch starts:
`{"prefix": i, "key": k, "offset": o, "etag": e, "item": n, "batch": b}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from app.config import MAX_BATCH_BYTES
from app.sources import s3
from app.sources.globs import selects
from app.sources.jsonstream import JsonStreamError, values

log = logging.getLogger(__name__)

START = {"prefix": 0, "key": "", "offset": None, "item": 0, "batch": 0}


class SourceError(ValueError):
    """The input cannot be enqueued (a bad value, no items); the message is for the job status."""


def objects_from(source: dict, cursor: dict) -> Iterator[tuple[int, s3.S3Object, int]]:
    """(prefix index, object, first byte to read) of the selected objects from the cursor on."""
    prefixes = s3.distinct_prefixes(source["s3_paths"])
    for index in range(cursor["prefix"], len(prefixes)):
        bucket, prefix = prefixes[index]
        after = cursor["key"] if index == cursor["prefix"] else ""
        if after and cursor["offset"] is not None:  # resume inside the object the last batch ended in
            yield index, s3.S3Object(bucket, after, -1, cursor.get("etag", "")), cursor["offset"]
        for obj in s3.list_objects(bucket, prefix, start_after=after):
            if selects(obj.url, source["includes"], source["excludes"]):
                yield index, obj, 0


def file_path_batches(source: dict, cursor: dict) -> Iterator[tuple[str, dict]]:
    """(body, cursor after it) of each batch of S3 paths."""
    paths: list[str] = []
    size = 2
    item, batch = cursor["item"], cursor["batch"]
    position = cursor
    said = False
    for index, obj, _ in objects_from(source, dict(cursor, offset=None)):
        cost = len(json.dumps(obj.url)) + 1
        if paths and size + cost >= MAX_BATCH_BYTES:  # full by size before batch_size: close it early
            if not said:
                said = _say_closed_early(batch, len(paths), source["batch_size"])
            yield _close(paths, position, item, batch)
            batch, paths, size = batch + 1, [], 2
        paths.append(obj.url)
        size += cost
        item += 1
        position = {"prefix": index, "key": obj.key, "offset": None}
        if len(paths) == source["batch_size"]:
            yield _close(paths, position, item, batch)
            batch, paths, size = batch + 1, [], 2
    if paths:
        yield _close(paths, position, item, batch)


def _say_closed_early(batch: int, count: int, batch_size: int) -> bool:
    """Say in the job's log that batches are smaller than `batch_size` (for a predictor that
    expects `len(payload) == batch_size`); True: said. Callers say it once an enqueuing."""
    log.info(
        "batch %d holds %d items, not batch_size %d: a batch must stay under 256 KiB, so batches of "
        "items this large are closed early (this is said once)",
        batch,
        count,
        batch_size,
    )
    return True


def _close(paths: list[str], position: dict, item: int, batch: int) -> tuple[str, dict]:
    return json.dumps(paths), {**position, "item": item, "batch": batch + 1}


def delimited_batches(source: dict, cursor: dict) -> Iterator[tuple[str, dict]]:
    """(body, cursor after it) of each batch of JSON values; raises SourceError for a bad value."""
    batch = _RangeBatch()
    item, number = cursor["item"], cursor["batch"]
    said = False
    for index, obj, start in objects_from(source, cursor):
        try:
            for _, first, end in values(s3.stream(obj.bucket, obj.key, start, obj.etag), start):
                if batch.count and batch.size + (end - first) + 1 >= MAX_BATCH_BYTES:
                    if not said:
                        said = _say_closed_early(number, batch.count, source["batch_size"])
                    yield batch.close(item, number)  # full by size before batch_size: close it early
                    number += 1
                batch.add(index, obj, first, end)
                item += 1
                if batch.count == source["batch_size"]:
                    yield batch.close(item, number)
                    number += 1
        except JsonStreamError as err:
            raise SourceError(f"item {item + 1}: {err.reason} ({obj.url}, byte {err.offset})") from None
    if batch.count:
        yield batch.close(item, number)


class _RangeBatch:
    """Byte ranges of consecutive values, merged per object (a batch may span objects)."""

    def __init__(self) -> None:
        self.ranges: list[list] = []
        self.count = 0
        self.size = 2
        self.prefix = 0

    def add(self, prefix: int, obj: s3.S3Object, first: int, end: int) -> None:
        """Add one value (bytes first..end of an object); a value of the same object extends the last range."""
        self.prefix = prefix
        if self.ranges and self.ranges[-1][:2] == [obj.bucket, obj.key]:
            self.ranges[-1][3] = end
        else:
            self.ranges.append([obj.bucket, obj.key, first, end, obj.etag])
        self.count += 1
        self.size += end - first + 1

    def close(self, item: int, number: int) -> tuple[str, dict]:
        """The batch body, and the cursor just after its last value."""
        _, key, _, end, etag = self.ranges[-1]
        body = json.dumps({"s3_ranges": self.ranges})
        self.ranges, self.count, self.size = [], 0, 2
        return body, {"prefix": self.prefix, "key": key, "offset": end, "etag": etag, "item": item, "batch": number + 1}


def source_batches(source: dict, cursor: dict) -> Iterator[tuple[str, dict]]:
    """The batches of a file_path_lister or delimited_files source, from the cursor on."""
    kind = file_path_batches if source["kind"] == "file_path_lister" else delimited_batches
    return kind(source, cursor)


def payload(body: str) -> list:
    """What `predict` receives for a batch body: the list itself, or the values its ranges hold."""
    decoded = json.loads(body)
    if isinstance(decoded, list):
        return decoded
    items: list = []
    for bucket, key, start, end, *etag in decoded["s3_ranges"]:  # (no ETag: enqueued by an older version)
        items.extend(value for value, _, _ in values([s3.read_range(bucket, key, start, end, *etag)]))
    return items

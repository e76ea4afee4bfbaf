"""Slicing an item list into batches, each a JSON list under the batch size limit."""

from __future__ import annotations

import json

from app.config import MAX_BATCH_BYTES
from app.errors import InvalidRequest
from app.model.wire import backlog_entry

# One encoder for every batch: json.dumps() with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# For the rare batch holding a lone surrogate ("\ud800" is valid JSON), which UTF-8 cannot encode.
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def item_batches(items: list, batch_size: int) -> list[str]:
    """Backlog entries of consecutive slices of `batch_size` items; raises InvalidRequest if one is too big."""
    entries = []
    for number, start in enumerate(range(0, len(items), batch_size)):
        payload = _ENCODER.encode(items[start : start + batch_size])
        size = len(payload) if payload.isascii() else _utf8_size(payload)
        if size < 0:
            payload = _ASCII_ENCODER.encode(items[start : start + batch_size])
            size = len(payload)
        if size >= MAX_BATCH_BYTES:
            last = min(start + batch_size, len(items)) - 1
            raise InvalidRequest(
                f"item_list: batch {number} (items {start} to {last}) is {size / 1024:.1f} KiB, and every "
                f"batch must be smaller than 256 KiB: lower item_list.batch_size, or put the items in S3"
            )
        entries.append(backlog_entry(number, payload))
    return entries


def _utf8_size(payload: str) -> int:
    """Bytes of `payload` in UTF-8, or -1 if it holds a lone surrogate."""
    try:
        return len(payload.encode())
    except UnicodeEncodeError:
        return -1

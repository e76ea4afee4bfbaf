"""Reading a stream of JSON values (newline-delimited JSON in practice) with their byte offsets.

The offsets let a batch be described as byte ranges of S3 objects, read again by the worker with a
ranged GET, so neither the enqueuer nor Redis ever holds the whole input.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Iterator

from app.config import MAX_BATCH_BYTES

WHITESPACE = re.compile(r"[ \t\n\r]*")
# Windows tools (Excel, PowerShell, Notepad) start UTF-8 files with one: skipped, as Python's
# utf-8-sig codec does, rather than failing item 1.
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"


def no_constants(name: str) -> None:
    """json's parse_constant: `NaN` and `Infinity` are Python's, not JSON's (RFC 8259)."""
    raise ValueError(f"{name} is not a JSON value")


def finite_float(text: str) -> float:
    """json's parse_float: 1e400 would become inf, which json writes back as the non-JSON `Infinity`."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def reason(err: ValueError) -> str:
    """What a JSON value's error says, in a user's words (Python's int limit says how to lift it)."""
    if "integer string conversion" in str(err):
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return str(err)


# The same JSON as a request body's (app/jobs/submission.py): an input read from S3 and one sent inline
# take and refuse the same values.
DECODER = json.JSONDecoder(parse_constant=no_constants, parse_float=finite_float)


class JsonStreamError(ValueError):
    """A value that is not valid JSON, or too large for any batch; `offset` is its first byte."""

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


def values(chunks: Iterable[bytes], offset: int = 0) -> Iterator[tuple[object, int, int]]:
    """(value, first byte, end byte) of each JSON value in the stream; raises JsonStreamError.

    `offset` is the position of the first chunk in its object. Values may span lines; blank lines
    are ignored. A value is only parsed once the lines holding it are complete.
    """
    pending = b""
    at_start = offset == 0  # a byte order mark may lead the object
    for chunk in chunks:
        pending += chunk
        if at_start:
            if len(pending) < len(BOM) and BOM.startswith(pending):
                continue  # too few bytes yet to tell
            at_start = False
            if pending.startswith(BOM):
                pending, offset = pending[len(BOM) :], offset + len(BOM)
        cut = pending.rfind(b"\n") + 1
        if cut == 0:
            _check_size(pending, offset)
            continue
        consumed = yield from _parse(pending[:cut], offset, at_end=False)
        pending = pending[consumed:]
        offset += consumed
        _check_size(pending, offset)
    if at_start and pending == BOM:
        pending, offset = b"", offset + len(BOM)
    yield from _parse(pending, offset, at_end=True)


def _check_size(pending: bytes, offset: int) -> None:
    # A value this long cannot fit a batch: say so rather than buffer an unbounded line.
    if len(pending) > 2 * MAX_BATCH_BYTES:
        raise JsonStreamError("a value (or a run of text without a line break) is over 256 KiB", offset)


def _parse(block: bytes, offset: int, at_end: bool):
    """Yield the complete values of `block`; return how many bytes were consumed."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as err:
        if offset == 0 and block.startswith(GZIP_MAGIC):
            compressed = "the file is gzip-compressed: delimited_files are read as plain UTF-8 text"
            raise JsonStreamError(compressed, 0) from None
        raise JsonStreamError(f"not UTF-8 text ({err.reason})", offset + err.start) from None
    to_bytes = _offsets(text, block)
    i = WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]  # `[ \t\n\r]*` matches at every index
    while i < len(text):
        try:
            value, j = DECODER.raw_decode(text, i)
        except json.JSONDecodeError as err:
            if at_end or len(text) - i > 2 * MAX_BATCH_BYTES:
                raise JsonStreamError(err.msg, offset + to_bytes(i)) from None
            return to_bytes(i)  # perhaps a value spanning lines: parse it with the next block
        except ValueError as err:  # NaN, 1e400, an integer over Python's digit limit
            raise JsonStreamError(reason(err), offset + to_bytes(i)) from None
        except RecursionError:  # json's decoder recurses once per level of lists and objects
            raise JsonStreamError(
                "a value nested too deeply (lists or objects in one another)", offset + to_bytes(i)
            ) from None
        start, end = to_bytes(i), to_bytes(j)
        if end - start >= MAX_BATCH_BYTES - 2:
            too_big = f"a value of {(end - start) / 1024:.0f} KiB cannot fit a 256 KiB batch"
            raise JsonStreamError(too_big, offset + start)
        yield value, offset + start, offset + end
        i = WHITESPACE.match(text, j).end()  # type: ignore[union-attr]  # as above; no call per value
    return len(block)


def _offsets(text: str, block: bytes):
    """Character index -> byte index in `block` (the identity for ASCII text).

    Indexes are asked for in increasing order, so only the text since the last one is encoded:
    encoding from the start each time would make a block of non-ASCII text quadratic.
    """
    if len(text) == len(block):
        return lambda i: i
    last = [0, 0]  # character index, byte index

    def to_bytes(i: int) -> int:
        char, byte = last if i >= last[0] else (0, 0)
        byte += len(text[char:i].encode())
        last[:] = [i, byte]
        return byte

    return to_bytes


def parse_all(data: bytes) -> list:
    """Every value of a complete piece of the stream (what a worker reads back for a batch)."""
    return [value for value, _, _ in values([data])]

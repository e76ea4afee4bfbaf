"""Properties of the pure input handling, checked by hypothesis: batching, JSON streams, globs, submissions.

Each property runs a bounded number of derandomized examples, so the suite stays fast and the same
on every run.
"""

from __future__ import annotations

import json
import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import MAX_BATCH_BYTES
from app.errors import InvalidRequest
from app.jobs.batching import item_batches
from app.sources.globs import GlobError, compile_glob
from app.sources.jsonstream import JsonStreamError, values
from app.web.schemas import SOURCES, load_submission

BOUNDED = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Strings with some non-ASCII text and lone surrogates (valid JSON, "\ud800", but not UTF-8).
TEXT = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(["é", "✓", "\ud800", "\udfff", '"', "\\"])))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given positions (any chunking, empty chunks included)."""
    points = sorted(min(cut, len(data)) for cut in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- item_batches ---------------------------------------------------------------------------------

# Now and then an item big enough to push a batch over 256 KiB.
BIG = st.integers(min_value=MAX_BATCH_BYTES // 4, max_value=MAX_BATCH_BYTES + 10).map(lambda n: "x" * n)
ITEMS = st.lists(st.one_of(JSON, JSON, JSON, BIG), min_size=1, max_size=40)


def encoded_size(batch: list) -> int:
    try:
        return len(json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:  # a lone surrogate: the batch is sent as ASCII JSON
        return len(json.dumps(batch, separators=(",", ":")))


@BOUNDED
@given(items=ITEMS, batch_size=st.integers(min_value=1, max_value=50))
def test_item_batches_give_back_the_items_in_order_in_batches_under_the_limit(items, batch_size):
    slices = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    too_big = [number for number, batch in enumerate(slices) if encoded_size(batch) >= MAX_BATCH_BYTES]
    try:
        entries = item_batches(items, batch_size)
    except InvalidRequest as err:
        assert too_big, err.message
        assert f"batch {too_big[0]} " in err.message and "256 KiB" in err.message
        return
    assert not too_big
    assert len(entries) == math.ceil(len(items) / batch_size)
    again = []
    for number, entry in enumerate(entries):
        batch_id, _, payload = entry.partition(" ")
        assert batch_id == str(number)
        size = len(payload.encode("utf-8", errors="surrogatepass"))
        assert size < MAX_BATCH_BYTES
        payload.encode()  # UTF-8 encodable: what goes to Redis and the broker
        batch = json.loads(payload)
        assert isinstance(batch, list) and 1 <= len(batch) <= batch_size
        again += batch
    assert again == items


# --- jsonstream.values ----------------------------------------------------------------------------

BLANK = st.sampled_from(["", "\n", " \n", "\t\r\n", "\n\n"])


@st.composite
def streams(draw):
    """(values, data): JSON values serialized one per line, with blank lines and some spanning lines."""
    found = draw(st.lists(JSON, max_size=20))
    parts = []
    for value in found:
        parts.append(draw(BLANK))
        indent = draw(st.sampled_from([None, None, None, 1]))
        parts.append(json.dumps(value, ensure_ascii=draw(st.booleans()), indent=indent) + "\n")
    parts.append(draw(BLANK))
    return found, "".join(parts).encode("utf-8", errors="surrogatepass")


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@BOUNDED
@given(stream=streams(), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8), offset=st.integers(0, 99))
def test_json_stream_yields_exactly_the_values_with_their_byte_ranges(stream, cuts, offset):
    expected, data = stream
    if not valid_utf8(data):  # a lone surrogate written with ensure_ascii=False: not UTF-8, so an error
        try:
            list(values(chunked(data, cuts), offset))
        except JsonStreamError as err:
            assert "UTF-8" in err.reason
        return
    found = list(values(chunked(data, cuts), offset))
    assert [value for value, _, _ in found] == expected
    for value, start, end in found:
        assert offset <= start < end <= offset + len(data)
        assert json.loads(data[start - offset : end - offset]) == value


JSONISH = st.binary(max_size=300) | st.text(alphabet='[]{}",:0123456789.eE+-tfnulr \n\\\x00é').map(str.encode)


@BOUNDED
@given(
    data=st.one_of(
        JSONISH,
        st.lists(JSONISH, max_size=5).map(b"\n".join),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
        st.integers(min_value=1, max_value=200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n + b"\n"),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_json_stream_raises_nothing_but_json_stream_errors(data, cuts):
    try:
        for _, start, end in values(chunked(data, cuts)):
            assert 0 <= start < end <= len(data)
    except JsonStreamError as err:
        assert 0 <= err.offset <= len(data)
        assert err.reason


# --- globs ----------------------------------------------------------------------------------------

SPECIALS = "*?[]{}!^,-\\/"


@BOUNDED
@given(pattern=st.text() | st.text(alphabet=st.sampled_from([*SPECIALS, "a", "b", "z", "é", "."])))
def test_any_pattern_compiles_or_raises_a_glob_error(pattern):
    try:
        compiled = compile_glob(pattern)
    except GlobError:
        return
    assert isinstance(compiled, re.Pattern)
    compiled.fullmatch("s3://bucket/some/key.jpg")


SEGMENT_CHARS = st.characters(exclude_characters="*?[]{}\\/")  # literal, within one path segment


@st.composite
def single_segment_globs(draw):
    """(pattern, a path it must match): literals with `*` and `?` (never `**`), no `/`."""
    tokens = draw(st.lists(st.one_of(st.text(SEGMENT_CHARS, min_size=1), st.just("*"), st.just("?")), max_size=8))
    pattern, path = "", ""
    for token in tokens:
        if token == "*" and pattern.endswith("*"):
            continue  # `**` crosses segments: not this property
        pattern += token
        if token == "*":
            path += draw(st.text(SEGMENT_CHARS, max_size=5))
        elif token == "?":
            path += draw(SEGMENT_CHARS)
        else:
            path += token
    return pattern, path


@BOUNDED
@given(glob=single_segment_globs(), before=st.text(max_size=5), after=st.text(max_size=5))
def test_star_and_question_mark_match_within_a_segment_and_never_a_slash(glob, before, after):
    pattern, path = glob
    compiled = compile_glob(pattern)
    assert compiled.fullmatch(path)
    with_slash = before + "/" + after
    assert not compiled.fullmatch(with_slash)
    for i in range(len(path) + 1):  # a `/` anywhere in a matching path: no longer a match
        assert not compiled.fullmatch(path[:i] + "/" + path[i:])


LITERAL = st.text(st.characters(exclude_characters="*?[]{}\\"))


@BOUNDED
@given(pattern=LITERAL, other=LITERAL)
def test_a_literal_pattern_matches_exactly_itself(pattern, other):
    compiled = compile_glob(pattern)
    assert compiled.fullmatch(pattern)
    assert bool(compiled.fullmatch(other)) is (other == pattern)
    assert not compiled.fullmatch(pattern + "x")


# --- load_submission ------------------------------------------------------------------------------

FIELDS = [
    *SOURCES,
    "workers",
    "timeout",
    "sqs_dead_letter_queue",
    "config",
    "items",
    "batch_size",
    "s3_paths",
    "includes",
    "excludes",
    "arn",
    "max_receive_count",
]
KEYS = st.sampled_from(FIELDS) | TEXT
SUBMISSION_LIKE = st.recursive(
    SCALARS | st.integers(min_value=-2, max_value=2**64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


@BOUNDED
@given(body=SUBMISSION_LIKE | st.dictionaries(KEYS, SUBMISSION_LIKE, max_size=8))
def test_load_submission_raises_nothing_but_invalid_request(body):
    try:
        loaded = load_submission(body)
    except InvalidRequest as err:
        assert isinstance(err.message, str) and err.message
        return
    assert sum(source in loaded for source in SOURCES) == 1
    assert loaded["workers"] >= 1 and isinstance(loaded["config"], dict)

"""Pure logic of the S3 sources: JSON streams with byte offsets, globs, prefixes."""

from __future__ import annotations

import gzip
import json

import pytest

from app.sources.globs import GlobError, compile_glob, selects
from app.sources.jsonstream import JsonStreamError, parse_all, values
from app.sources.s3 import distinct_prefixes, parse_path


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1 << 20])
def test_values_and_their_byte_ranges_whatever_the_chunking(size):
    data = '{"a": 1}\n\n  {"b":\n 2}\n[1, 2] "x"\n{"c": "é✓"}\n3'.encode()
    found = list(values(chunked(data, size)))
    assert [v for v, _, _ in found] == [{"a": 1}, {"b": 2}, [1, 2], "x", {"c": "é✓"}, 3]
    for value, start, end in found:
        assert json.loads(data[start:end]) == value


def test_offsets_of_non_ascii_values_stay_exact_over_many_values():
    rows = [{"n": i, "text": "héllo wörld ✓" * (i % 3)} for i in range(5000)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    found = list(values(chunked(data, 4096), offset=100))
    assert [v for v, _, _ in found] == rows
    assert all(json.loads(data[s - 100 : e - 100]) == v for v, s, e in found)


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b'{"a": 1}\n{"b": oops}\n', "Expecting value", 9),
        (b'{"a": 1}\n{"b": 2', "Expecting", 9),
        (b'{"a": 1}\n\xff\n', "not UTF-8", 9),
        (b'{"a": 1}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply", 9),
        (b'{"a": 1}\n' + json.dumps({"big": "x" * 300_000}).encode() + b"\n", "256 KiB", 9),
        (b'{"a": 1}\n[Infinity]\n', "Infinity is not a JSON value", 9),
        (gzip.compress(b'{"a": 1}\n' * 100), "the file is gzip-compressed", 0),
        (b'{"a": 1}\n{"b": -1e999}\n', "the number -1e999 is out of range", 9),
        (b'{"a": 1}\n' + b"1" * 5000 + b"\n", "an integer of more than 4300 digits", 9),
    ],
)
def test_malformed_or_oversized_values_are_reported_with_their_offset(data, reason, offset):
    with pytest.raises(JsonStreamError) as caught:
        list(values(chunked(data, 1000)))
    assert reason in caught.value.reason
    assert caught.value.offset == offset


def test_parse_all_reads_back_a_range():
    assert parse_all(b' {"a": 1}\n\n[2] ') == [{"a": 1}, [2]]


@pytest.mark.parametrize("pattern", ["[abc", "{a,b", "a}", "[z-a]", "x\\", "[]"])
def test_bad_globs_do_not_compile(pattern):
    with pytest.raises(GlobError):
        compile_glob(pattern)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**.jpg", "s3://b/images/deep/x.jpg", True),
        ("*.jpg", "s3://b/x.jpg", False),
        ("s3://b/*.jpg", "s3://b/x.jpg", True),
        ("s3://b/*.jpg", "s3://b/d/x.jpg", False),
        ("s3://b/?.jpg", "s3://b/x.jpg", True),
        ("s3://b/?.jpg", "s3://b//.jpg", False),
        ("s3://b/[!x].jpg", "s3://b/y.jpg", True),
        ("s3://b/[!x].jpg", "s3://b/x.jpg", False),
        ("s3://b/{a,b/c}.jpg", "s3://b/b/c.jpg", True),
        ("s3://b/{a,b}*", "s3://b/ab/c", False),
        ("s3://b/a\\*", "s3://b/a*", True),
        ("s3://b/a\\*", "s3://b/ab", False),
        ("s3://b/x+y(1).txt", "s3://b/x+y(1).txt", True),
    ],
)
def test_glob_rules(pattern, path, matches):
    assert bool(compile_glob(pattern).fullmatch(path)) is matches


def test_excludes_apply_after_includes():
    assert selects("s3://b/a.jpg", ["**.jpg"], [])
    assert not selects("s3://b/a.jpg", ["**.jpg"], ["**a.jpg"])
    assert not selects("s3://b/a.png", ["**.jpg"], [])
    assert selects("s3://b/a.png", [], ["**.jpg"])


def test_paths_are_parsed_and_overlapping_prefixes_listed_once():
    assert parse_path("s3://bucket/a/b") == ("bucket", "a/b")
    assert parse_path("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="not an S3 path"):
        parse_path("bucket/a")
    paths = ["s3://b/img", "s3://b/img/1.png", "s3://b/img", "s3://c/img/1.png", "s3://b/other"]
    assert distinct_prefixes(paths) == [("b", "img"), ("c", "img/1.png"), ("b", "other")]


def test_a_prefix_is_covered_by_any_shorter_one_kept_not_only_the_one_sorted_before_it():
    paths = ["s3://b/a", "s3://b/ab", "s3://b/abc", "s3://b/ac", "s3://b/b", "s3://c/", "s3://c/x", "s3://b/"]
    assert distinct_prefixes(paths) == [("c", ""), ("b", "")]
    assert distinct_prefixes(["s3://b/ab", "s3://b/a", "s3://b/ac", "s3://b/b"]) == [("b", "a"), ("b", "b")]


def test_a_manifest_of_many_exact_keys_is_deduplicated_in_one_pass():
    """Comparing every path with every other took 19 s for 10,000 keys: the request timed out."""
    paths = [f"s3://b/images/{i:06d}.jpg" for i in range(100_000)] + ["s3://b/images/000007.jpg"]
    kept = distinct_prefixes(paths)
    assert len(kept) == 100_000 and kept[7] == ("b", "images/000007.jpg")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 1 << 20])
def test_a_byte_order_mark_leading_the_object_is_skipped_and_offsets_stay_exact(size):
    data = b'\xef\xbb\xbf{"a": 1}\n{"b": 2}\n'
    found = list(values(chunked(data, size)))
    assert [v for v, _, _ in found] == [{"a": 1}, {"b": 2}]
    assert all(json.loads(data[start:end]) == v for v, start, end in found)
    assert list(values([b"\xef\xbb\xbf"])) == []


def test_a_byte_order_mark_is_only_skipped_at_the_start_of_the_object():
    with pytest.raises(JsonStreamError, match="Expecting value"):
        list(values([b'\xef\xbb\xbf{"a": 1}\n'], offset=100))  # the middle of an object: not a BOM

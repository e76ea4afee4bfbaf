"""The request side of app/web/schemas.py: marshmallow's messages in one line, and the body decoded as strict JSON."""

from __future__ import annotations

import json

import pytest

from app.errors import InvalidRequest
from app.web.schemas import MAX_NESTING, decode_body, describe

# --- describe -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ({"workers": ["Missing data for required field."]}, "workers: missing data for required field"),
        (
            {"item_list": {"batch_size": ["Must be greater than or equal to 1."]}},
            "item_list.batch_size: must be greater than or equal to 1",
        ),
        (
            {"sqs_dead_letter_queue": {"arn": ["Must not be empty."], "max_receive_count": ["Not a valid integer."]}},
            "sqs_dead_letter_queue.arn: must not be empty; "
            "sqs_dead_letter_queue.max_receive_count: not a valid integer",
        ),
        ({"_schema": ["Exactly one source is required."]}, "exactly one source is required"),
        ({"item_list": {"_schema": ["Invalid input type."]}}, "item_list: invalid input type"),
        (
            {"file_path_lister": {"s3_paths": {0: ["Not a valid string."]}}},
            "file_path_lister.s3_paths.0: not a valid string",
        ),
        ("Plain message.", "plain message"),
        ({"timeout": "Not a valid integer."}, "timeout: not a valid integer"),
    ],
)
def test_describe_flattens_marshmallow_messages_into_dotted_paths(messages, expected):
    assert describe(messages) == expected


@pytest.mark.parametrize("path", [{"batchsize": ["Unknown field."]}, {"item_list": {"batchsize": ["Unknown field."]}}])
def test_describe_says_an_unknown_field_may_be_misspelt(path):
    text = describe(path)
    name = "batchsize" if "batchsize" in path else "item_list.batchsize"
    assert text == f"{name}: unknown field (check its spelling against the job submission reference)"


def test_describe_joins_several_fields_with_semicolons_in_order():
    text = describe({"workers": ["Bad."], "timeout": ["Worse."]})
    assert text == "workers: bad; timeout: worse"


def test_describe_keeps_every_message_of_one_field():
    text = describe({"workers": ["First problem.", "Second problem."]})
    assert text.startswith("workers: first problem")
    assert "second problem" in text


# --- decode_body ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"workers": 1}', {"workers": 1}),
        (b"  \n{}\n ", {}),
        (b"[1, 2.5]", [1, 2.5]),
        ('{"text": "é 🐍"}'.encode(), {"text": "é 🐍"}),
        (b'\xef\xbb\xbf{"bom": true}', {"bom": True}),
        (b"1e308", 1e308),
        (b'"\\ud800"', "\ud800"),
    ],
)
def test_decode_body_reads_json(raw, expected):
    assert decode_body(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t\r\n "])
def test_decode_body_refuses_an_empty_body(raw):
    with pytest.raises(InvalidRequest, match="the request body is empty"):
        decode_body(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b'{"workers": 1,}', "not valid JSON"),
        (b"{'workers': 1}", "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON: Extra data"),
        (b"\xff\xfe\xfd", "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
        (b"NaN", "NaN is not a JSON value"),
        (b'{"a": Infinity}', "Infinity is not a JSON value"),
        (b'{"a": [-Infinity]}', "-Infinity is not a JSON value"),
        (b'{"a": 1e400}', "1e400 is out of range"),
        (b'{"a": -1e400}', "-1e400 is out of range"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
    ],
)
def test_decode_body_refuses_what_is_not_json(raw, reason):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(raw)
    assert reason in caught.value.message
    assert caught.value.status == 400


def nested(levels: int, inner: object = None) -> object:
    """`levels` lists, one inside the other, around `inner` (if given)."""
    value: object = [] if inner is None else [inner]
    for _ in range(levels - 1):
        value = [value]
    return value


def test_decode_body_takes_nesting_up_to_the_limit():
    assert decode_body(json.dumps(nested(MAX_NESTING)).encode()) == nested(MAX_NESTING)
    objects = {"a": 1}
    for _ in range(MAX_NESTING - 1):
        objects = {"a": objects}
    assert decode_body(json.dumps(objects).encode()) == objects
    mixed = {"items": nested(MAX_NESTING - 2, {"x": 1})}  # MAX_NESTING levels: body, lists, the innermost object
    assert decode_body(json.dumps(mixed).encode()) == mixed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(nested(MAX_NESTING + 1), id="lists"),
        pytest.param({"config": nested(MAX_NESTING)}, id="lists-in-an-object"),
        pytest.param(nested(MAX_NESTING - 1, {"a": {"b": 1}}), id="objects-in-lists"),
        pytest.param([1, 2, [3], nested(MAX_NESTING), "x"], id="one-deep-branch-among-shallow-ones"),
        pytest.param(nested(600), id="600-levels"),  # parses, but deep_merge's copy and the worker would not cope
    ],
)
def test_decode_body_refuses_nesting_over_the_limit(value):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(json.dumps(value).encode())
    assert f"nested too deeply (more than {MAX_NESTING} levels" in caught.value.message


def test_brackets_that_do_not_nest_deeply_are_not_counted_as_depth():
    wide = {"items": [[{"a": [1]}]] * 10_000}  # 40,000 brackets, four levels
    assert decode_body(json.dumps(wide).encode()) == wide
    in_strings = {"text": "[" * 1000 + "{" * 1000}
    assert decode_body(json.dumps(in_strings).encode()) == in_strings

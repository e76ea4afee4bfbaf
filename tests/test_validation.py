"""The validation matrix of `POST /batch/<api>` and the error answers of the other routes (real Redis, no worker)."""

from __future__ import annotations

import copy
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from app.config import MAX_BATCH_BYTES, MAX_BODY_BYTES
from app.errors import PayloadTooLarge
from app.web.responses import JobSpecSchema
from app.web.schemas import MAX_INT, MAX_NESTING
from tests.conftest import PREDICTORS
from tests.shapes import answer_keys

VALID = {"workers": 1, "item_list": {"items": [1, "two", {"three": 3}], "batch_size": 2}}
S3_SOURCE = {"s3_paths": ["s3://bucket/images/"], "batch_size": 1}
JOB_KEYS = "batchery:job:*"
MINIMAL_JOBS = "batchery:api:minimal:jobs"
# The reference page's RESPONSE: every key always (Cortex sent timeout and sqs_dead_letter_queue as null).
SPEC_KEYS = answer_keys(JobSpecSchema)


def body_with(**changes) -> dict:
    """VALID with top-level fields replaced (a value of `...` removes the field)."""
    body = copy.deepcopy(VALID)
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def _nested(base: dict, changes: dict) -> dict:
    nested = copy.deepcopy(base)
    for name, value in changes.items():
        if value is ...:
            nested.pop(name, None)
        else:
            nested[name] = value
    return nested


def item_list(**changes) -> dict:
    """VALID's item_list with fields replaced (a value of `...` removes the field)."""
    return _nested(VALID["item_list"], changes)


def dead_letter_queue(**changes) -> dict:
    return _nested({"arn": "arn:aws:sqs:us-west-2:123456789012:failed", "max_receive_count": 3}, changes)


def post(client, body: bytes | dict, api: str = "minimal", dry_run: bool = False, **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"/batch/{api}" + ("?dryRun=true" if dry_run else "")
    return client.post(url, data=data, content_type="application/json", **kwargs)


def assert_error(response, status_code: int, kind: str, *fragments: str) -> str:
    """The answer is `status_code` with the JSON body {"kind": kind, "message": ...} naming each fragment."""
    assert response.status_code == status_code, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"kind", "message"}, body
    assert body["kind"] == kind
    assert isinstance(body["message"], str)
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    return body["message"]


def nested_lists(levels: int) -> bytes:
    """`levels` lists, one inside the other."""
    return b"[" * levels + b"]" * levels


def with_config_value(raw_value: bytes) -> bytes:
    """VALID with `config: {"k": <raw_value>}`: the value sits two levels down (body, config)."""
    return b'{"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "config": {"k": ' + raw_value + b"}}"


def with_item(raw_item: bytes) -> bytes:
    """VALID with one item: it sits three levels down (body, item_list, items)."""
    return b'{"workers": 1, "item_list": {"items": [' + raw_item + b'], "batch_size": 1}}'


def job_keys(r) -> set[str]:
    """The job hashes `batchery:job:<id>` (not their sub-keys, which a worker may touch for older jobs)."""
    return {key for key in r.scan_iter(JOB_KEYS, count=1000) if key.count(":") == 2}


class Snapshot:
    """What jobs exist now, to show that a request created none."""

    def __init__(self, r):
        self.r = r
        self.keys = job_keys(r)
        self.jobs = r.zcard(MINIMAL_JOBS)

    def assert_nothing_created(self):
        assert job_keys(self.r) - self.keys == set()
        assert self.r.zcard(MINIMAL_JOBS) <= self.jobs


class LimitedInput(io.RawIOBase):
    """A request body that fails the test if the server reads more than `allowed` bytes of it."""

    def __init__(self, allowed: int):
        self.allowed = allowed
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.read_bytes + len(buffer) > self.allowed:
            raise AssertionError(f"the server read past byte {self.allowed} of an oversized body")
        buffer[:] = b" " * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


# --- the body is not a JSON object ------------------------------------------------------------------

NOT_A_JOB = [
    pytest.param(b"", "the request body is empty", id="empty"),
    pytest.param(b" \r\n\t  \n", "the request body is empty", id="whitespace"),
    pytest.param(b'{"workers": 1, "item_list": {', "not valid JSON", id="truncated-json"),
    pytest.param(b"{'workers': 1}", "not valid JSON", id="single-quotes"),
    pytest.param(b'{"workers": 1,}', "not valid JSON", id="trailing-comma"),
    pytest.param(b"workers=1", "not valid JSON", id="form-encoded"),
    pytest.param(b"\xff\xfe\xfa", "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "must be a JSON object", id="list"),
    pytest.param(b'"a job"', "must be a JSON object", id="string"),
    pytest.param(b"42", "must be a JSON object", id="number"),
    pytest.param(b"null", "must be a JSON object", id="null"),
    pytest.param(b"true", "must be a JSON object", id="bool"),
    pytest.param(
        b'{"workers": NaN, "item_list": {"items": [1], "batch_size": 1}}', "NaN is not a JSON value", id="nan"
    ),
    pytest.param(b'{"workers": 1, "item_list": {"items": [Infinity], "batch_size": 1}}', "Infinity", id="infinity"),
    pytest.param(b'{"workers": 1, "item_list": {"items": [-Infinity], "batch_size": 1}}', "-Infinity", id="-infinity"),
    pytest.param(b'{"workers": 1, "item_list": {"items": [1e400], "batch_size": 1}}', "1e400", id="float-overflow"),
    pytest.param(b"[" * 100_000, "nested too deeply", id="100000-brackets"),
    pytest.param(b'{"a":' * 100_000, "nested too deeply", id="100000-objects"),
    pytest.param(
        b'{"workers": 1, "item_list": {"items": ' + b"[" * 100_000 + b"]" * 100_000 + b', "batch_size": 1}}',
        "nested too deeply",
        id="deep-item",
    ),
    # Deep enough to parse, too deep for what follows (deep_merge's copy answered 500 from ~500 levels).
    pytest.param(with_config_value(nested_lists(600)), "nested too deeply", id="config-600-levels"),
    pytest.param(with_item(nested_lists(600)), "nested too deeply", id="item-600-levels"),
    pytest.param(
        with_config_value(nested_lists(MAX_NESTING - 1)),
        f"more than {MAX_NESTING} levels",
        id="config-one-level-over-the-limit",
    ),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
@pytest.mark.parametrize(("raw", "fragment"), NOT_A_JOB)
def test_a_body_that_is_not_a_json_object_is_a_400(client, r, raw, fragment, dry_run):
    snapshot = Snapshot(r)
    assert_error(post(client, raw, dry_run=dry_run), 400, "invalid_request", fragment)
    snapshot.assert_nothing_created()


def test_clients_polling_with_an_empty_post_get_a_400_every_time(client):
    for _ in range(3):
        assert_error(client.post("/batch/minimal"), 400, "invalid_request", "empty")


# --- the job breaks a submission rule ---------------------------------------------------------------

MISSING = "missing data for required field"
AT_LEAST_1 = "must be at least 1"
AT_MOST_MAX = "must be at most 9223372036854775807 (a 64-bit integer, as on Cortex)"  # Go ints
NOT_INT = "not a valid integer"
UNKNOWN = "unknown field"

BAD_JOBS = [
    # workers
    pytest.param(body_with(workers=...), [f"workers: {MISSING}"], id="workers-missing"),
    pytest.param(body_with(workers=0), [f"workers: {AT_LEAST_1}"], id="workers-0"),
    pytest.param(body_with(workers=-1), [f"workers: {AT_LEAST_1}"], id="workers--1"),
    pytest.param(body_with(workers=1.5), [f"workers: {NOT_INT}"], id="workers-1.5"),
    pytest.param(body_with(workers=2.0), [f"workers: {NOT_INT}"], id="workers-2.0"),
    pytest.param(body_with(workers="2"), [f"workers: {NOT_INT}"], id="workers-string"),
    pytest.param(body_with(workers=True), [f"workers: {NOT_INT}"], id="workers-true"),
    pytest.param(body_with(workers=None), ["workers: field may not be null"], id="workers-null"),
    pytest.param(body_with(workers=[1]), [f"workers: {NOT_INT}"], id="workers-list"),
    pytest.param(body_with(workers=MAX_INT + 1), [f"workers: {AT_MOST_MAX}"], id="workers-over-int64"),
    # sources
    pytest.param(
        body_with(item_list=...),
        ["exactly one of item_list, file_path_lister, delimited_files is required (found: none)"],
        id="no-source",
    ),
    pytest.param(
        body_with(file_path_lister=S3_SOURCE),
        ["exactly one of", "(found: item_list, file_path_lister)"],
        id="two-sources",
    ),
    pytest.param(
        body_with(item_list=..., file_path_lister=S3_SOURCE, delimited_files=S3_SOURCE),
        ["exactly one of", "(found: file_path_lister, delimited_files)"],
        id="two-s3-sources",
    ),
    pytest.param(
        body_with(file_path_lister=S3_SOURCE, delimited_files=S3_SOURCE),
        ["exactly one of", "(found: item_list, file_path_lister, delimited_files)"],
        id="three-sources",
    ),
    pytest.param(  # null is not given, as on Cortex: then no input is given
        body_with(item_list=None), ["exactly one of", "is required (found: none)"], id="item-list-null"
    ),
    pytest.param(
        body_with(item_list=None, delimited_files=None), ["(found: none)"], id="item-list-and-delimited-files-null"
    ),
    pytest.param(body_with(item_list=[1, 2]), ["item_list: invalid input type"], id="item-list-a-list"),
    pytest.param(body_with(item_list="items"), ["item_list: invalid input type"], id="item-list-a-string"),
    # item_list.items
    pytest.param(body_with(item_list=item_list(items=...)), [f"item_list.items: {MISSING}"], id="items-missing"),
    pytest.param(
        body_with(item_list=item_list(items=[])), ["item_list.items: must hold at least one item"], id="items-empty"
    ),
    pytest.param(body_with(item_list=item_list(items="abc")), ["item_list.items: must be a list"], id="items-string"),
    pytest.param(
        body_with(item_list=item_list(items={"a": 1})), ["item_list.items: must be a list"], id="items-object"
    ),
    pytest.param(body_with(item_list=item_list(items=5)), ["item_list.items: must be a list"], id="items-number"),
    pytest.param(
        body_with(item_list=item_list(items=None)), ["item_list.items: field may not be null"], id="items-null"
    ),
    # item_list.batch_size
    pytest.param(
        body_with(item_list=item_list(batch_size=0)), [f"item_list.batch_size: {AT_LEAST_1}"], id="batch-size-0"
    ),
    pytest.param(
        body_with(item_list=item_list(batch_size=-3)), [f"item_list.batch_size: {AT_LEAST_1}"], id="batch-size--3"
    ),
    pytest.param(
        body_with(item_list=item_list(batch_size=...)), [f"item_list.batch_size: {MISSING}"], id="batch-size-missing"
    ),
    pytest.param(
        body_with(item_list=item_list(batch_size="2")), [f"item_list.batch_size: {NOT_INT}"], id="batch-size-string"
    ),
    pytest.param(
        body_with(item_list=item_list(batch_size=1.5)), [f"item_list.batch_size: {NOT_INT}"], id="batch-size-float"
    ),
    pytest.param(
        body_with(item_list=item_list(batch_size=MAX_INT + 1)),
        [f"item_list.batch_size: {AT_MOST_MAX}"],
        id="batch-size-over-int64",
    ),
    # timeout
    pytest.param(body_with(timeout=0), [f"timeout: {AT_LEAST_1}"], id="timeout-0"),
    pytest.param(body_with(timeout=-5), [f"timeout: {AT_LEAST_1}"], id="timeout--5"),
    pytest.param(body_with(timeout="60"), [f"timeout: {NOT_INT}"], id="timeout-string"),
    pytest.param(body_with(timeout=1.5), [f"timeout: {NOT_INT}"], id="timeout-float"),
    pytest.param(body_with(timeout=MAX_INT + 1), [f"timeout: {AT_MOST_MAX}"], id="timeout-over-int64"),
    # 10**400 seconds overflowed the deadline (a float): a 500 on submission, though the dry run passed
    pytest.param(body_with(timeout=10**400), [f"timeout: {AT_MOST_MAX}"], id="timeout-10**400"),
    # sqs_dead_letter_queue
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(arn="")),
        ["sqs_dead_letter_queue.arn: must not be empty"],
        id="dlq-empty-arn",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(arn=...)),
        [f"sqs_dead_letter_queue.arn: {MISSING}"],
        id="dlq-missing-arn",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(arn=5)),
        ["sqs_dead_letter_queue.arn: not a valid string"],
        id="dlq-arn-number",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(max_receive_count=0)),
        [f"sqs_dead_letter_queue.max_receive_count: {AT_LEAST_1}"],
        id="dlq-max-receive-count-0",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(max_receive_count=...)),
        [f"sqs_dead_letter_queue.max_receive_count: {MISSING}"],
        id="dlq-max-receive-count-missing",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(max_receive_count="3")),
        [f"sqs_dead_letter_queue.max_receive_count: {NOT_INT}"],
        id="dlq-max-receive-count-string",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(max_receive_count=MAX_INT + 1)),
        [f"sqs_dead_letter_queue.max_receive_count: {AT_MOST_MAX}"],
        id="dlq-max-receive-count-over-int64",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue="arn:aws:sqs:us-west-2:123456789012:failed"),
        ["sqs_dead_letter_queue: invalid input type"],
        id="dlq-a-string",
    ),
    # unknown fields
    pytest.param(body_with(batchsize=2), [f"batchsize: {UNKNOWN}", "check its spelling"], id="unknown-top-level"),
    pytest.param(
        body_with(item_list=item_list(batchsize=2, batch_size=...)),
        [f"item_list.batchsize: {UNKNOWN}", f"item_list.batch_size: {MISSING}"],
        id="unknown-in-item-list",
    ),
    pytest.param(
        body_with(sqs_dead_letter_queue=dead_letter_queue(max_recieve_count=3)),
        [f"sqs_dead_letter_queue.max_recieve_count: {UNKNOWN}"],
        id="unknown-in-dlq",
    ),
    # config
    pytest.param(body_with(config=[1, 2]), ["config: not a valid mapping type"], id="config-list"),
    pytest.param(body_with(config="model=resnet"), ["config: not a valid mapping type"], id="config-string"),
    pytest.param(body_with(config=5), ["config: not a valid mapping type"], id="config-number"),
    # S3 sources are checked by the same schema
    pytest.param(
        body_with(item_list=..., file_path_lister=_nested(S3_SOURCE, {"batch_size": ...})),
        [f"file_path_lister.batch_size: {MISSING}"],
        id="file-path-lister-batch-size-missing",
    ),
    pytest.param(
        body_with(item_list=..., delimited_files=_nested(S3_SOURCE, {"s3_paths": [1]})),
        ["delimited_files.s3_paths.0: not a valid string"],
        id="delimited-files-path-number",
    ),
    # several problems at once are all named
    pytest.param(
        body_with(workers=0, timeout="x", item_list=item_list(batch_size=0)),
        [f"workers: {AT_LEAST_1}", f"timeout: {NOT_INT}", f"item_list.batch_size: {AT_LEAST_1}"],
        id="three-problems",
    ),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
@pytest.mark.parametrize(("body", "fragments"), BAD_JOBS)
def test_a_job_that_breaks_a_submission_rule_is_a_400_naming_the_field(client, r, body, fragments, dry_run):
    snapshot = Snapshot(r)
    assert_error(post(client, body, dry_run=dry_run), 400, "invalid_request", *fragments)
    snapshot.assert_nothing_created()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(VALID, id="minimal-body"),
        pytest.param(body_with(timeout=None), id="timeout-null"),
        pytest.param(body_with(timeout=1), id="timeout-1"),
        pytest.param(body_with(sqs_dead_letter_queue=None), id="dlq-null"),
        pytest.param(body_with(sqs_dead_letter_queue=dead_letter_queue(max_receive_count=1)), id="dlq-1"),
        pytest.param(body_with(config=None), id="config-null"),
        # clients that send every key of the submission, the inputs they don't use as null
        pytest.param(body_with(file_path_lister=None, delimited_files=None), id="other-inputs-null"),
        pytest.param(body_with(config={"nested": {"deep": [1, None]}}), id="config-nested"),
        pytest.param(body_with(item_list=item_list(batch_size=10**6)), id="batch-size-over-item-count"),
        pytest.param(body_with(item_list=item_list(items=[None, [], {}, "é 🐍", 1.5, -0.0])), id="any-json-items"),
        pytest.param(body_with(item_list=item_list(items=["\ud800"])), id="lone-surrogate-item"),
        pytest.param(body_with(workers=MAX_INT, timeout=MAX_INT), id="largest-ints"),
    ],
)
def test_what_the_rules_allow_passes_a_dry_run(client, r, body):
    snapshot = Snapshot(r)
    response = post(client, body, dry_run=True)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_data(as_text=True).strip() == "validations passed"
    snapshot.assert_nothing_created()


def test_dry_run_answers_text_and_creates_nothing(client, r):
    snapshot = Snapshot(r)
    response = post(client, VALID, dry_run=True)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data() == b"validations passed"  # no newline after it, byte for byte as Cortex
    snapshot.assert_nothing_created()


# Go's strconv.ParseBool, which Cortex's dryRun went through, takes these (and the false forms).
@pytest.mark.parametrize("flag", ["True", "TRUE", "true", "1", "t", "T"])
def test_dry_run_flag_takes_what_cortex_took(client, r, flag):
    snapshot = Snapshot(r)
    response = client.post(f"/batch/minimal?dryRun={flag}", data=json.dumps(VALID))
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "validations passed"
    snapshot.assert_nothing_created()


@pytest.mark.parametrize("flag", ["0", "f", "False"])
def test_a_false_dry_run_flag_submits_the_job(client, r, flag):
    response = client.post(f"/batch/minimal?dryRun={flag}", data=json.dumps(VALID))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert r.zscore(MINIMAL_JOBS, response.get_json()["job_id"]) is not None


@pytest.mark.parametrize("flag", ["yes", "2", ""])
def test_a_dry_run_flag_that_is_not_true_or_false_is_a_400_not_a_real_job(client, r, flag):
    snapshot = Snapshot(r)
    response = client.post(f"/batch/minimal?dryRun={flag}", data=json.dumps(VALID))
    assert_error(response, 400, "invalid_request", f"dryRun must be true or false (or 1 or 0), not '{flag}'")
    snapshot.assert_nothing_created()


# --- sizes: the 10 MiB request and the 256 KiB batch -------------------------------------------------


def test_a_body_over_10_mib_is_a_413(client, r):
    snapshot = Snapshot(r)
    raw = json.dumps(VALID).encode().ljust(MAX_BODY_BYTES + 1)
    message = assert_error(post(client, raw, dry_run=True), 413, "payload_too_large", "10 MiB")
    assert message == PayloadTooLarge.MESSAGE
    snapshot.assert_nothing_created()


def test_a_body_of_exactly_10_mib_is_read(client):
    raw = json.dumps(VALID).encode().ljust(MAX_BODY_BYTES)  # trailing whitespace is valid JSON
    response = post(client, raw, dry_run=True)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]


def test_an_oversized_body_is_refused_from_its_content_length_without_reading_it(flask_app, client, r):
    assert flask_app.config["MAX_CONTENT_LENGTH"] == MAX_BODY_BYTES
    snapshot = Snapshot(r)
    body = LimitedInput(allowed=64 * 1024)
    response = client.post(
        "/batch/minimal",
        content_type="application/json",
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)},
    )
    assert_error(response, 413, "payload_too_large", "10 MiB")
    assert body.read_bytes == 0
    snapshot.assert_nothing_created()


def one_item_batch(payload_bytes: int) -> dict:
    """A job whose one batch is the JSON list ["xx..."] of exactly `payload_bytes` bytes."""
    return body_with(item_list={"items": ["x" * (payload_bytes - 4)], "batch_size": 1})


def test_a_batch_just_under_256_kib_is_accepted(client, r):
    snapshot = Snapshot(r)
    response = post(client, one_item_batch(MAX_BATCH_BYTES - 1), dry_run=True)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.get_data(as_text=True).strip() == "validations passed"
    snapshot.assert_nothing_created()


@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
def test_a_batch_of_256_kib_is_a_400_naming_the_batch_and_the_fix(client, r, dry_run):
    snapshot = Snapshot(r)
    response = post(client, one_item_batch(MAX_BATCH_BYTES), dry_run=dry_run)
    assert_error(
        response,
        400,
        "invalid_request",
        "item_list: batch 0 (items 0 to 0) is 256.0 KiB",
        "smaller than 256 KiB",
        "lower item_list.batch_size",
    )
    snapshot.assert_nothing_created()


def test_the_too_big_batch_is_named_among_many(client, r):
    snapshot = Snapshot(r)
    items = ["small"] * 6 + ["x" * (100 * 1024)] * 3 + ["small"]  # batch 2 holds the three big ones
    response = post(client, body_with(item_list={"items": items, "batch_size": 3}), dry_run=True)
    assert_error(response, 400, "invalid_request", "batch 2 (items 6 to 8)", "lower item_list.batch_size")
    snapshot.assert_nothing_created()
    smaller = post(client, body_with(item_list={"items": items, "batch_size": 2}), dry_run=True)
    assert smaller.status_code == 200, smaller.get_data(as_text=True)[:500]


def test_the_batch_limit_counts_utf8_bytes(client):
    # 131070 "é" are 262140 bytes in UTF-8 (262144 with the brackets and quotes) but far fewer characters.
    too_big = body_with(item_list={"items": ["é" * ((MAX_BATCH_BYTES - 4) // 2)], "batch_size": 1})
    assert_error(post(client, too_big, dry_run=True), 400, "invalid_request", "batch 0", "256 KiB")
    fits = body_with(item_list={"items": ["é" * ((MAX_BATCH_BYTES - 6) // 2)], "batch_size": 1})
    assert post(client, fits, dry_run=True).status_code == 200


# --- a valid submission --------------------------------------------------------------------------------


def assert_recent_iso_time(text: str):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", text), text
    created = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)


def test_a_valid_submission_answers_the_job_spec_and_creates_the_job(client, r, probe_config):
    snapshot = Snapshot(r)
    response = post(client, body_with(config=probe_config))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    spec = response.get_json()
    assert set(spec) == SPEC_KEYS
    assert (spec["timeout"], spec["sqs_dead_letter_queue"]) == (None, None)  # not given: null, as Cortex sent
    assert re.fullmatch(r"[0-9a-f]{16}", spec["job_id"])
    assert spec["api_name"] == "minimal"
    assert spec["kind"] == "BatchAPI"
    assert spec["workers"] == 1
    assert spec["config"] == probe_config  # the minimal API has no config of its own
    api = client.get("/batch/minimal").get_json()["spec"]
    assert spec["api_id"] == api["api_id"]
    assert isinstance(spec["sqs_url"], str)
    assert spec["sqs_url"]
    assert_recent_iso_time(spec["created_time"])

    assert job_keys(r) >= snapshot.keys | {f"batchery:job:{spec['job_id']}"}
    assert r.zcard(MINIMAL_JOBS) == snapshot.jobs + 1
    assert r.zscore(MINIMAL_JOBS, spec["job_id"]) is not None
    status = client.get(f"/batch/minimal?jobID={spec['job_id']}")
    assert status.status_code == 200
    job_status = status.get_json()["job_status"]
    assert job_status["job_id"] == spec["job_id"]
    assert {key: job_status[key] for key in ("timeout", "sqs_dead_letter_queue")} == {
        "timeout": None,
        "sqs_dead_letter_queue": None,
    }


def test_the_job_config_is_deep_merged_over_the_api_config_and_optional_fields_are_echoed(client, probe_config):
    config = dict(probe_config, nested={"override": "job", "added": "job"}, job_level=[1, 2])
    dlq = {"arn": "arn:aws:sqs:us-west-2:123456789012:failed.fifo", "max_receive_count": 2}
    body = body_with(workers=2, timeout=600, sqs_dead_letter_queue=dlq, config=config)
    response = post(client, body, api="probe")
    assert response.status_code == 200, response.get_data(as_text=True)
    spec = response.get_json()
    assert set(spec) == SPEC_KEYS
    assert spec["api_name"] == "probe"
    assert spec["workers"] == 2
    assert spec["timeout"] == 600
    assert spec["sqs_dead_letter_queue"] == dlq
    # tests/predictors/cortex.yaml: probe's config is
    # {sleep: 0, api_level: from-api, nested: {keep: api, override: api}}
    assert spec["config"] == {
        "sleep": 0,
        "api_level": "from-api",
        "nested": {"keep": "api", "override": "job", "added": "job"},
        "job_level": [1, 2],
        **probe_config,
    }
    assert spec["api_id"] == client.get("/batch/probe").get_json()["spec"]["api_id"]
    # the job belongs to probe: it is not found under another API
    assert_error(client.get(f"/batch/minimal?jobID={spec['job_id']}"), 404, "job_not_found", spec["job_id"])


def test_the_largest_ints_make_a_job_whose_status_reads(client, probe_config):
    body = body_with(workers=MAX_INT, timeout=MAX_INT, config=probe_config)
    body["sqs_dead_letter_queue"] = dead_letter_queue(max_receive_count=MAX_INT)
    response = post(client, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    spec = response.get_json()
    assert (spec["workers"], spec["timeout"], spec["sqs_dead_letter_queue"]["max_receive_count"]) == (MAX_INT,) * 3
    status = client.get(f"/batch/minimal?jobID={spec['job_id']}")
    assert status.status_code == 200, status.get_data(as_text=True)
    assert status.get_json()["job_status"]["timeout"] == MAX_INT
    assert status.get_json()["job_status"]["status"] != "status_timed_out"


def test_a_config_nested_to_the_limit_is_merged_stored_and_read_back(client, probe_config):
    # body, config and probe's `nested` are three levels; the rest is a chain of {"a": ...} down to the limit.
    chain: dict = {"leaf": "job"}
    for _ in range(MAX_NESTING - 4):
        chain = {"a": chain}
    config = dict(probe_config, nested={"override": "job", "a": chain})
    raw = json.dumps(body_with(config=config)).encode()
    response = post(client, raw, api="probe")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    spec = response.get_json()
    assert spec["config"]["nested"] == {"keep": "api", "override": "job", "a": chain}  # deep-merged
    status = client.get(f"/batch/probe?jobID={spec['job_id']}")
    assert status.status_code == 200, status.get_data(as_text=True)[:500]
    assert status.get_json()["job_status"]["config"] == spec["config"]

    deeper = json.dumps(body_with(config=dict(probe_config, nested={"a": {"a": chain}}))).encode()
    assert_error(post(client, deeper, api="probe"), 400, "invalid_request", f"more than {MAX_NESTING} levels")


def test_the_job_config_does_not_change_the_deployed_api(client, probe_config):
    before = client.get("/batch/probe").get_json()["spec"]["predictor"]["config"]
    response = post(client, body_with(config=dict(probe_config, nested={"override": "job"})), api="probe")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get("/batch/probe").get_json()["spec"]["predictor"]["config"] == before
    assert before["nested"] == {"keep": "api", "override": "api"}


# --- the other routes' errors ----------------------------------------------------------------------------


def test_an_unknown_api_is_a_404_saying_it_is_not_deployed(client, r):
    snapshot = Snapshot(r)
    message = assert_error(post(client, VALID, api="nope"), 404, "api_not_found", "api nope is not deployed")
    assert "minimal" in message and "probe" in message  # lists what is deployed
    assert_error(post(client, VALID, api="nope", dry_run=True), 404, "api_not_found", "nope")
    snapshot.assert_nothing_created()


@pytest.mark.parametrize(
    ("method", "url", "status_code", "kind", "fragment"),
    [
        ("get", "/batch/nope", 404, "api_not_found", "api nope is not deployed"),
        ("get", "/batch/nope?jobID=abc", 404, "api_not_found", "api nope is not deployed"),
        ("delete", "/batch/nope?jobID=abc", 404, "api_not_found", "api nope is not deployed"),
        ("get", "/batch/minimal?jobID=nope", 404, "job_not_found", "job nope does not exist for api minimal"),
        ("delete", "/batch/minimal?jobID=nope", 404, "job_not_found", "job nope does not exist for api minimal"),
        ("delete", "/batch/minimal", 400, "invalid_request", "jobID"),
        ("delete", "/batch/minimal?jobID=", 400, "invalid_request", "jobID"),
        ("get", "/batch/minimal?jobID=", 400, "invalid_request", "the jobID query parameter is required"),
        ("get", "/batch/minimal?jobID=a&jobID=b", 400, "invalid_request", "'jobID' is given more than once"),
        ("delete", "/batch/minimal?jobID=a&jobID=b", 400, "invalid_request", "'jobID' is given more than once"),
        ("get", "/no/such/route", 404, "not_found", "not found"),
        ("post", "/batch", 405, "method_not_allowed", "not allowed"),  # GET /batch lists the APIs
        ("put", "/batch/minimal", 405, "method_not_allowed", "not allowed"),
        # a misspelt parameter would answer another question (the API, not the job): refused
        ("get", "/batch/minimal?jobid=abc", 400, "invalid_request", "unknown query parameter 'jobid'"),
        ("get", "/batch/minimal?jobid=abc", 400, "invalid_request", "this endpoint takes jobID"),
        ("delete", "/batch/minimal?jobID=a&force=1", 400, "invalid_request", "unknown query parameter 'force'"),
        ("get", "/batch?limit=3", 400, "invalid_request", "this endpoint takes no query parameters"),
        ("get", "/batch/minimal/logs?jobID=a&since=3", 400, "invalid_request", "takes jobID, after"),
        ("patch", "/batch/minimal", 405, "method_not_allowed", "not allowed"),
    ],
)
def test_the_other_routes_answer_json_errors(client, method, url, status_code, kind, fragment):
    response = getattr(client, method)(url)
    assert_error(response, status_code, kind, fragment)


def test_a_method_not_allowed_says_which_are_and_sends_allow(client):
    """HTTP requires the Allow header on a 405; the message names the methods too."""
    response = client.put("/batch/minimal")
    message = assert_error(response, 405, "method_not_allowed", "PUT is not allowed for this URL; it takes")
    assert set(response.headers["Allow"].split(", ")) == {"DELETE", "GET", "HEAD", "OPTIONS", "POST"}
    assert all(method in message for method in ("DELETE", "GET", "POST"))
    assert response.headers["Content-Type"] == "application/json"


def test_a_job_status_shows_the_api_the_job_runs_not_a_redeploy_since(client, probe_config, tmp_path):
    """As Cortex answers with the spec of the job's api_id (it showed the API as deployed now)."""
    registry = client.application.extensions["batchery"].registry
    submitted = post(client, body_with(config=probe_config), api="probe").get_json()
    redeployed = tmp_path / "cortex.yaml"
    redeployed.write_text((PREDICTORS / "cortex.yaml").read_text().replace("sleep: 0", "sleep: 0.5"))
    (tmp_path / "probe.py").write_text((PREDICTORS / "probe.py").read_text())
    (tmp_path / "minimal.py").write_text((PREDICTORS / "minimal.py").read_text())
    try:
        registry.deploy_file(redeployed)
        assert client.get("/batch/probe").get_json()["spec"]["api_id"] != submitted["api_id"]
        answer = client.get(f"/batch/probe?jobID={submitted['job_id']}").get_json()
        assert answer["api_spec"]["api_id"] == submitted["api_id"] == answer["job_status"]["api_id"]
        assert answer["api_spec"]["predictor"]["config"]["sleep"] == 0
    finally:
        registry.deploy_file(PREDICTORS / "cortex.yaml")  # the other tests' API back


def test_a_chunked_body_over_10_mib_is_a_413_not_a_truncated_job(client, r):
    """Without a Content-Length (chunked, as gunicorn passes it) the body is cut at the limit."""
    snapshot = Snapshot(r)
    padded = b'{"workers": 1, "item_list": {"items": [1], "batch_size": 1}' + b" " * MAX_BODY_BYTES + b"}"
    response = client.post(
        "/batch/minimal",
        input_stream=io.BytesIO(padded),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    message = assert_error(response, 413, "payload_too_large", "10 MiB")
    assert message == PayloadTooLarge.MESSAGE  # as when the Content-Length says so
    snapshot.assert_nothing_created()


def test_a_job_the_listing_finds_past_its_timeout_is_listed_with_the_ended_ones(client):
    """Reading it ends it `status_timed_out`: it was still listed among the jobs in progress."""
    from app.model import status
    from app.model.job import build_spec, now

    services = client.application.extensions["batchery"]
    api = services.registry.get("minimal")

    def job(created: float, timeout: int | None) -> str:
        submission = {"workers": 1, "config": {}, **({"timeout": timeout} if timeout else {})}
        spec = build_spec(api, submission, services.submitter.queue_url, created)
        services.store.create(spec, api, created)  # enqueuing: no batch reaches a worker
        return spec["job_id"]

    timed_out = job(now() - 5, timeout=1)  # newer than the running one, past its deadline
    running = job(now() - 10, timeout=None)
    listed = client.get("/batch/minimal").get_json()["batch_job_statuses"]
    ids = [answer["job_id"] for answer in listed]
    assert listed[ids.index(timed_out)]["status"] == status.TIMED_OUT
    assert ids.index(running) < ids.index(timed_out)
    assert all(answer["status"] in status.IN_PROGRESS for answer in listed[: ids.index(running) + 1])
    client.delete(f"/batch/minimal?jobID={running}")

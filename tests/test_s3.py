"""S3 inputs against a real moto server over HTTP: filtering, dry runs, enqueuing, resuming."""

from __future__ import annotations

import json
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from app.model import status
from app.store import keys
from tests.conftest import BOTH_BROKERS
from tests.services import wait_for

pytestmark = BOTH_BROKERS

IMAGES = ["images/img_1.png", "images/img_2.jpg", "images/img_3.jpg", "images/img_4.gif"]


@pytest.fixture
def bucket(moto) -> str:
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def put(bucket: str, objects: dict[str, bytes | str]) -> None:
    s3 = boto3.client("s3")

    def one(item):
        key, body = item
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, objects.items()))


def dry_run(client, lister: dict, kind: str = "file_path_lister"):
    body = {"workers": 1, kind: dict(lister, batch_size=lister.get("batch_size", 1))}
    return client.post("/batch/minimal?dryRun=true", data=json.dumps(body))


@pytest.mark.parametrize(
    ("lister", "selected"),
    [
        ({"s3_paths": ["s3://{b}/images/"]}, IMAGES),
        ({"s3_paths": ["s3://{b}/images/img"]}, IMAGES),
        ({"s3_paths": ["s3://{b}/images/img_1.png", "s3://{b}/images/img_2.jpg"]}, IMAGES[:2]),
        ({"s3_paths": ["s3://{b}/images/"], "includes": ["**.jpg"]}, IMAGES[1:3]),
        ({"s3_paths": ["s3://{b}/images/"], "includes": ["**.jpg"], "excludes": ["**_3.jpg"]}, IMAGES[1:2]),
        ({"s3_paths": ["s3://{b}/images/"], "excludes": ["**.gif"]}, IMAGES[:3]),
        ({"s3_paths": ["s3://{b}/images/"], "includes": None, "excludes": None}, IMAGES),  # null: none, as on Cortex
        # the rest of DESIGN.md's rules: * and ? stay in a segment, [...], [!...], {a,b}; duplicates once
        ({"s3_paths": ["s3://{b}/images/"], "includes": ["*.jpg"], "excludes": []}, None),
        ({"s3_paths": ["s3://{b}/"], "includes": ["s3://{b}/*/img_?.{png,gif}"]}, [IMAGES[0], IMAGES[3]]),
        ({"s3_paths": ["s3://{b}/images/"], "includes": ["**img_[!12].*"]}, IMAGES[2:]),
        ({"s3_paths": ["s3://{b}/images/", "s3://{b}/images/img_1", "s3://{b}/images/"]}, IMAGES),
    ],
)
def test_filtering_examples_of_the_reference_page(client, bucket, lister, selected):
    put(bucket, {key: "x" for key in [*IMAGES, "images/", "other/readme.txt"]})
    lister = json.loads(json.dumps(lister).replace("{b}", bucket))
    response = dry_run(client, lister)
    if selected is None:
        assert response.status_code == 400
        assert response.get_json()["message"] == "no s3 files match search criteria"
        return
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    assert lines == [f"s3://{bucket}/{key}" for key in selected] + ["validations passed"]


def test_dry_run_creates_nothing(client, r, bucket):
    put(bucket, {"a.json": "{}"})
    before = r.zcard(keys.api_jobs("minimal"))
    assert dry_run(client, {"s3_paths": [f"s3://{bucket}/"]}, "delimited_files").status_code == 200
    assert r.zcard(keys.api_jobs("minimal")) == before


@pytest.mark.parametrize(
    ("lister", "words"),
    [
        ({"s3_paths": ["bucket/images"]}, ["file_path_lister.s3_paths", "is not an S3 path"]),
        ({"s3_paths": ["s3:///images"]}, ["is not an S3 path"]),
        ({"s3_paths": ["s3://{b}/"], "includes": ["**.{jpg"]}, ["file_path_lister.includes", "'**.{jpg'"]),
        ({"s3_paths": ["s3://{b}/"], "excludes": ["[z-a]"]}, ["file_path_lister.excludes", "'[z-a]'"]),
        ({"s3_paths": ["s3://{b}/nothing-here/"]}, ["no s3 files match search criteria"]),
        ({"s3_paths": ["s3://no-such-bucket-batchery/x"]}, ["no-such-bucket-batchery", "does not exist"]),
    ],
)
def test_bad_s3_input_is_a_400_naming_the_path_or_pattern(client, bucket, lister, words):
    put(bucket, {"images/a.jpg": "x"})
    lister = json.loads(json.dumps(lister).replace("{b}", bucket))
    response = dry_run(client, lister)
    assert response.status_code == 400
    message = response.get_json()["message"]
    for word in words:
        assert word in message


def test_a_prefix_of_more_keys_than_one_listing_page(client, jobs, worker, r, bucket, probe_config):
    keys_ = [f"many/{i:05d}.txt" for i in range(1234)]
    put(bucket, dict.fromkeys(keys_, "x"))
    listed = dry_run(client, {"s3_paths": [f"s3://{bucket}/many/"]}).get_data(as_text=True).splitlines()
    assert listed[:-1] == [f"s3://{bucket}/{key}" for key in keys_]
    spec = jobs.submit(
        "minimal",
        {
            "workers": 2,
            "config": probe_config,
            "file_path_lister": {"s3_paths": [f"s3://{bucket}/many/"], "batch_size": 100},
        },
    )
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.SUCCEEDED
    assert job["total_batch_count"] == 13
    payloads = [json.loads(p) for p in r.lrange(f"minimal:{probe_config['tag']}:payloads", 0, -1)]
    assert sorted(path for payload in payloads for path in payload) == [f"s3://{bucket}/{k}" for k in keys_]
    assert sorted(len(p) for p in payloads) == [34] + [100] * 12


def ndjson(rows: list) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_delimited_files_end_to_end_batches_span_files(jobs, worker, r, bucket, probe_config):
    put(
        bucket,
        {
            "data/part-0.jsonl": ndjson([{"n": 0}, {"n": 1}, {"n": 2}]),
            "data/part-1.jsonl": "\n" + ndjson([{"n": 3}]) + "\n\n" + ndjson([{"n": 4}, {"n": 5}]),
            "data/part-2.jsonl": '{"n": 6,\n "multi": "line"}\n' + ndjson([{"n": 7, "text": "héllo"}]),
            "data/skip.txt": "not json",
        },
    )
    spec = jobs.submit(
        "minimal",
        {
            "workers": 2,
            "config": probe_config,
            "delimited_files": {"s3_paths": [f"s3://{bucket}/data/"], "includes": ["**.jsonl"], "batch_size": 3},
        },
    )
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.SUCCEEDED, job
    assert job["total_batch_count"] == 3
    payloads = sorted(
        (json.loads(p) for p in r.lrange(f"minimal:{probe_config['tag']}:payloads", 0, -1)),
        key=lambda batch: batch[0]["n"],
    )
    assert payloads == [
        [{"n": 0}, {"n": 1}, {"n": 2}],
        [{"n": 3}, {"n": 4}, {"n": 5}],
        [{"n": 6, "multi": "line"}, {"n": 7, "text": "héllo"}],
    ]


def test_an_input_overwritten_during_its_job_fails_its_later_batches_saying_so(
    jobs, worker, flask_app, r, bucket, dead_letter_queue, probe_config
):
    """A batch is byte ranges read when it runs: an overwritten object gave the later batches the
    new file's bytes (mixed data, or values cut in two). They read the version listed (If-Match)
    and fail with a message; a dead letter carries the batch's items, read back from S3."""
    put(bucket, {"d/x.jsonl": ndjson([{"fail": "always"}, {"sleep": 1.5}, {"n": 2}, {"n": 3}])})
    arn = dead_letter_queue(f"changed-{probe_config['tag']}")
    spec = jobs.submit(
        "probe",
        {
            "workers": 1,
            "config": probe_config,
            "sqs_dead_letter_queue": {"arn": arn, "max_receive_count": 1},
            "delimited_files": {"s3_paths": [f"s3://{bucket}/d/x.jsonl"], "batch_size": 1},
        },
    )
    starts = f"probe:{probe_config['tag']}:starts:{spec['job_id']}"
    wait_for(lambda: any(json.loads(s)["batch"] == "1" for s in r.lrange(starts, 0, -1)), 60, what="batch 1")
    put(bucket, {"d/x.jsonl": ndjson([{"n": "new"}] * 4)})
    job = jobs.wait_final("probe", spec["job_id"])
    assert job["status"] == status.COMPLETED_WITH_FAILURES
    assert job["batch_metrics"]["succeeded"] == 1 and job["batch_metrics"]["failed"] == 3
    letters = {letter["batch_id"]: letter for letter in flask_app.extensions["batchery"].dead_letters.read(arn)}
    assert letters["0"]["payload"] == [{"fail": "always"}]  # the items, not where they were
    for batch_id in ("2", "3"):
        assert f"s3://{bucket}/d/x.jsonl changed since the job listed it" in letters[batch_id]["error"]
        assert letters[batch_id]["payload"]["s3_ranges"][0][:2] == [bucket, "d/x.jsonl"]  # unreadable: where
    started = {json.loads(s)["batch"] for s in r.lrange(starts, 0, -1)}
    assert started == {"0", "1"}  # predict never saw the new file's items


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"d/a.jsonl": ndjson([{"a": 1}, {"a": 2}]), "d/b.jsonl": '{"b": 1}\n{"b": oops}\n'}, ["item 4:", "d/b.jsonl"]),
        ({"d/a.jsonl": ndjson([{"a": 1}]) + json.dumps({"big": "x" * 300_000}) + "\n"}, ["item 2:", "256 KiB"]),
        ({"d/a.jsonl": "", "d/b.jsonl": "\n\n"}, ["no items"]),
        # JSON a request body may not hold either; the long integer used to fail the enqueuer for
        # ever (Python refuses it with a ValueError no rule caught), the job enqueuing, saying nothing
        ({"d/a.jsonl": '{"a": 1}\n{"a": NaN}\n'}, ["item 2:", "NaN is not a JSON value"]),
        ({"d/a.jsonl": '{"a": 1e400}\n'}, ["item 1:", "the number 1e400 is out of range"]),
        ({"d/a.jsonl": '{"a": 1}\n' + "9" * 5000 + "\n"}, ["item 2:", "an integer of more than 4300 digits"]),
    ],
)
def test_bad_delimited_input_ends_the_job_enqueue_failed_with_the_item(jobs, worker, bucket, files, words):
    put(bucket, files)
    spec = jobs.submit(
        "minimal",
        {
            "workers": 1,
            "config": {"redis_url": "redis://unused", "tag": "x"},
            "delimited_files": {"s3_paths": [f"s3://{bucket}/d/"], "batch_size": 10},
        },
    )
    job = jobs.wait_final("minimal", spec["job_id"])
    assert job["status"] == status.ENQUEUE_FAILED
    for word in words:
        assert word in job["message"]


def test_batches_start_while_enqueuing_continues_and_a_killed_enqueuer_is_resumed(
    jobs, worker, r, bucket, probe_config
):
    files = {f"parts/{i:04d}.jsonl": ndjson([{"file": i, "row": j} for j in range(5)]) for i in range(300)}
    put(bucket, files)
    spec = jobs.submit(
        "probe",
        {
            "workers": 2,
            "config": probe_config,
            "delimited_files": {"s3_paths": [f"s3://{bucket}/parts/"], "batch_size": 5},
        },
    )
    job_key = keys.job(spec["job_id"])
    assert jobs.status("probe", spec["job_id"])["status"] == status.ENQUEUING

    # batches run while the enqueuer is still reading: succeeded > 0 and status still enqueuing
    def running_while_enqueuing():
        job = jobs.status("probe", spec["job_id"])
        return job["status"] == status.ENQUEUING and job["batch_metrics"]["succeeded"] > 0 and r.hget(job_key, "cursor")

    wait_for(running_while_enqueuing, timeout=60, what="batches to run during enqueuing")
    holder = r.get(keys.enqueuer(spec["job_id"]))
    pid = int(holder.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    batch_at_kill = json.loads(r.hget(job_key, "cursor"))["batch"]
    assert batch_at_kill < 300, "the enqueuer had finished before it could be killed"

    job = jobs.wait_final("probe", spec["job_id"], timeout=120)
    assert job["status"] == status.SUCCEEDED
    assert job["total_batch_count"] == 300
    assert job["batch_metrics"]["succeeded"] == 300
    starts = [json.loads(s)["batch"] for s in r.lrange(f"probe:{probe_config['tag']}:starts:{spec['job_id']}", 0, -1)]
    assert sorted(map(int, starts)) == list(range(300)), "every batch ran exactly once"
    assert r.get(keys.enqueuer(spec["job_id"])) is None

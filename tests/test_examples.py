"""The example APIs of examples/cortex.yaml, run for real."""

from __future__ import annotations

import json

import pytest

from app.model import status
from app.store.registry import Registry
from tests.services import ROOT


@pytest.fixture
def examples(redis_server):
    Registry(redis_server.client).deploy_file(ROOT / "examples" / "cortex.yaml")


def test_sum_example_writes_one_result_file_per_job(jobs, worker, examples, tmp_path):
    numbers = [[i, i + 1, i + 2] for i in range(0, 30, 3)]
    spec = jobs.submit(
        "sum",
        {"workers": 2, "item_list": {"items": numbers, "batch_size": 3}, "config": {"results_dir": str(tmp_path)}},
    )
    assert jobs.wait_final("sum", spec["job_id"])["status"] == status.SUCCEEDED
    summary = json.loads((tmp_path / f"{spec['job_id']}.json").read_text())
    assert summary == {"job_id": spec["job_id"], "items": 10, "batches": 4, "total": sum(range(30))}


def test_text_stats_example_counts_words_and_finds_the_top_ones(jobs, worker, examples, tmp_path):
    documents = [
        {"id": "a", "text": "The cat sat on the mat. The cat slept!"},
        "Dogs chase cats. Cats chase mice.",
        {"id": "c", "text": "A cat, a dog and a mouse walk into a bar?"},
    ]
    spec = jobs.submit(
        "text-stats",
        {
            "workers": 2,
            "item_list": {"items": documents, "batch_size": 2},
            "config": {"results_dir": str(tmp_path), "top_words": 2},
        },
    )
    assert jobs.wait_final("text-stats", spec["job_id"])["status"] == status.SUCCEEDED
    per_document = [
        json.loads(line)
        for part in sorted((tmp_path / spec["job_id"]).glob("*.jsonl"))
        for line in part.read_text().splitlines()
    ]
    assert [doc["words"] for doc in per_document] == [9, 6, 11]
    assert per_document[0]["sentences"] == 2
    assert per_document[0]["top_words"] == ["cat", "sat"]
    summary = json.loads((tmp_path / f"{spec['job_id']}.json").read_text())
    assert summary["documents"] == 3
    assert summary["words"] == 26
    assert summary["top_words"][0] == ["cat", 3]

"""The dashboard's JSON (throughput, dead letters) and its pages, served by the API itself."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from app import create_app
from app.model import status
from app.store import batch_errors, throughput
from tests.conftest import BOTH_BROKERS
from tests.services import ROOT

TOKEN = "tok-dash-7c1e"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}  # what Chromium sends


@BOTH_BROKERS
def test_a_jobs_throughput_and_dead_letters(client, jobs, worker, probe_config):
    items = [1, 2, {"fail": "always"}, 3]
    spec = jobs.submit("probe", {"workers": 2, "config": probe_config, "item_list": {"items": items, "batch_size": 1}})
    assert jobs.wait_final("probe", spec["job_id"])["status"] == status.COMPLETED_WITH_FAILURES
    series = client.get(f"/batch/probe/{spec['job_id']}/throughput").get_json()
    assert series["bucket_seconds"] == 10
    # every batch that ended is in the series: 4 batches in 10-s buckets
    assert round(sum(point["batches_per_second"] for point in series["points"]) * 10) == 4
    letters = client.get(f"/batch/probe/{spec['job_id']}/dead_letters").get_json()
    assert letters["total"] == 1 and letters["more"] == 0
    [letter] = letters["dead_letters"]
    assert letter["batch_id"] == "2"
    assert letter["attempts"] >= 1
    assert "ValueError: probe failure on delivery" in letter["error"]


def test_the_json_routes_say_what_was_wrong(client, jobs):
    assert client.get("/batch/probe/0123456789abcdef/throughput").status_code == 404
    assert client.get("/batch/nope/0123456789abcdef/dead_letters").status_code == 404
    bad = client.get("/batch/probe/no.such/throughput")
    assert bad.status_code == 400 and "is not a job id" in bad.get_json()["message"]
    assert client.get("/batch/probe/0123456789abcdef/dead_letters?x=1").status_code == 400


def test_the_series_is_bounded_and_gaps_are_zero():
    buckets = {second: 5 for second in range(0, 100_000, 10)}  # ten thousand buckets: a 28-hour job
    series = throughput.series(buckets)
    assert len(series["points"]) <= throughput.MAX_POINTS
    assert series["points"][0]["batches_per_second"] == 0.5
    gappy = throughput.series({0: 10, 30: 20})
    assert [point["batches_per_second"] for point in gappy["points"]] == [1.0, 0, 0, 2.0]


def test_only_the_first_errors_are_kept(r):
    job_id = "dashcap0000000001"
    for n in range(batch_errors.BATCH_ERRORS_KEPT + 5):
        batch_errors.note(r, job_id, str(n), f"error {n}")
    assert r.hlen(f"batchery:job:{job_id}:batch_errors") == batch_errors.BATCH_ERRORS_KEPT


def test_a_browser_gets_the_pages_and_a_client_the_404_it_had(client):
    page = client.get("/", headers=HTML)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'name="viewport"' in page.get_data(as_text=True)
    assert client.get("/").status_code == 404
    assert client.get("/", headers={"Accept": "application/json"}).status_code == 404
    job_page = client.get("/jobs/probe/0123456789abcdef", headers=HTML).get_data(as_text=True)
    assert 'data-job="0123456789abcdef"' in job_page and "/static/dashboard.js" in job_page
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and "https://" not in script.get_data(as_text=True)  # nothing from outside


@pytest.fixture(scope="module")
def guarded(settings):
    return create_app({"SETTINGS": dataclasses.replace(settings, api_token=TOKEN, watchdog_seconds=0)}).test_client()


def test_with_a_token_the_shells_are_open_and_the_data_is_not(guarded):
    page = guarded.get("/", headers=HTML).get_data(as_text=True)
    assert 'data-token-required="yes"' in page and 'id="signin"' in page
    assert guarded.get("/jobs/probe/0123456789abcdef", headers=HTML).status_code == 200
    assert guarded.get("/static/dashboard.css").status_code == 200
    for path in ("/batch/probe/0123456789abcdef/throughput", "/batch/probe/0123456789abcdef/dead_letters", "/batch"):
        assert guarded.get(path).status_code == 401
        assert guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code != 401


def test_make_up_prints_the_dashboards_address(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("stack_for_dashboard", ROOT / "scripts" / "stack.py")
    stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack)
    stack.print_urls(stack.Config({"PORT": "18080", "BATCHERY_RUN_DIR": str(tmp_path)}))
    assert "Dashboard: http://127.0.0.1:18080/" in capsys.readouterr().out

"""Deep or huge JSON cannot take the API down: each is answered within its request, never a 5xx, and
the API answers the next request. Sent over real HTTP to the app served on a port (live_url)."""

from __future__ import annotations

import time

import pytest
import requests

from app.config import MAX_BATCH_BYTES, MAX_BODY_BYTES

HALF = MAX_BODY_BYTES // 2
WITHIN = 30  # seconds: an answer, not a hung or dead API
MIB = 1024 * 1024


def submission(items: bytes = b"[1]", batch_size: int = 1, config: bytes = b"{}") -> bytes:
    return (
        b'{"workers": 1, "item_list": {"items": '
        + items
        + b', "batch_size": '
        + str(batch_size).encode()
        + b'}, "config": '
        + config
        + b"}"
    )


def million_zeros() -> bytes:
    return b"[" + b",".join([b"0"] * 1_000_000) + b"]"


CASES = [
    # 10 MiB of nested arrays, balanced or not, as the body or deep inside it
    pytest.param(b"[" * HALF + b"]" * HALF, False, 400, "nested too deeply", id="10MiB-nested-arrays"),
    pytest.param(b"[" * MAX_BODY_BYTES, False, 400, "", id="10MiB-of-open-brackets"),
    pytest.param(
        b'{"a":' * (MAX_BODY_BYTES // 6) + b"1" + b"}" * (MAX_BODY_BYTES // 6),
        False,
        400,
        "nested",
        id="nested-objects",
    ),
    pytest.param(
        submission(config=b"[" * (HALF - 100) + b"]" * (HALF - 100)), False, 400, "nested too deeply", id="deep-config"
    ),
    # 1,000,000 tiny items: in 1,000 batches (a dry run), or in one batch far over 256 KiB
    pytest.param(submission(million_zeros(), 1000), True, 200, "validations passed", id="million-items-dry-run"),
    pytest.param(submission(million_zeros(), 1_000_000), False, 400, "256 KiB", id="million-items-one-batch"),
    # a 9 MiB string: an item that cannot fit a batch, or a config value (a dry run)
    pytest.param(submission(b'["' + b"x" * 9 * MIB + b'"]'), False, 400, "256 KiB", id="9MiB-string-item"),
    pytest.param(
        submission(config=b'{"k": "' + b"x" * 9 * MIB + b'"}'), True, 200, "validations passed", id="9MiB-string-config"
    ),
    pytest.param(
        submission(config=b'{"k": "' + b"\\u00e9\\ud800" * (9 * MIB // 12) + b'"}'),
        True,
        200,
        "validations passed",
        id="9MiB-string-of-escapes",
    ),
]


@pytest.mark.parametrize(("body", "dry_run", "status_code", "fragment"), CASES)
def test_deep_or_huge_json_is_answered_and_the_api_stays_up(live_url, body, dry_run, status_code, fragment):
    assert len(body) <= MAX_BODY_BYTES
    url = f"{live_url}/batch/minimal" + ("?dryRun=true" if dry_run else "")
    started = time.monotonic()
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=2 * WITHIN)
    assert time.monotonic() - started < WITHIN
    assert response.status_code == status_code, response.text[:500]
    if status_code == 400:
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"kind", "message"}
        assert fragment in response.json()["message"]
    else:
        assert fragment in response.text
    # and the API still answers
    assert requests.get(f"{live_url}/batch/minimal", timeout=WITHIN).status_code == 200
    assert requests.post(f"{live_url}/batch/minimal", data=b"", timeout=WITHIN).status_code == 400


def test_a_batch_just_under_the_limit_among_a_million_items_is_not_a_5xx(live_url):
    """The largest batch_size that fits: ~2 bytes an item, so 256 KiB / 2 items a batch."""
    body = submission(million_zeros(), MAX_BATCH_BYTES // 2 - 2)
    response = requests.post(f"{live_url}/batch/minimal?dryRun=true", data=body, timeout=2 * WITHIN)
    assert response.status_code == 200, response.text[:500]

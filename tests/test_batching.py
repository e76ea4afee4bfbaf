"""Items sliced into backlog entries (app/jobs/batching.py): ids from zero, JSON as sent, the 256 KiB limit."""

from __future__ import annotations

import json

import pytest

from app.config import MAX_BATCH_BYTES
from app.errors import InvalidRequest
from app.jobs.batching import item_batches
from app.model.wire import backlog_entry


def decoded(entries: list[str]) -> list[tuple[int, list]]:
    """Backlog entries back into (batch id, payload)."""
    pairs = [e.split(" ", 1) for e in entries]
    return [(int(batch_id), json.loads(body)) for batch_id, body in pairs]


def test_entry_is_the_batch_id_a_space_then_the_json():
    assert backlog_entry(7, "[1,2]") == "7 [1,2]"


def test_item_batches_are_consecutive_slices_with_ids_from_zero():
    entries = item_batches(list(range(7)), 3)
    assert entries == ["0 [0,1,2]", "1 [3,4,5]", "2 [6]"]


def test_item_batches_keep_any_json_value_as_it_is():
    items = [{"a": [1, None]}, "text", 1.5, True, None, ["x"], "é ✓ 🐍"]
    entries = item_batches(items, 2)
    assert [batch_id for batch_id, _ in decoded(entries)] == [0, 1, 2, 3]
    assert [payload for _, payload in decoded(entries)] == [items[0:2], items[2:4], items[4:6], items[6:7]]
    assert "é ✓ 🐍" in entries[-1]  # not \u-escaped: the size limit is measured on what is sent


@pytest.mark.parametrize(("n", "size", "lengths"), [(1, 1, [1]), (5, 5, [5]), (5, 10, [5]), (10, 4, [4, 4, 2])])
def test_item_batches_last_batch_holds_the_rest(n, size, lengths):
    entries = decoded(item_batches(list(range(n)), size))
    assert [len(payload) for _, payload in entries] == lengths
    assert [batch_id for batch_id, _ in entries] == list(range(len(lengths)))
    assert [item for _, payload in entries for item in payload] == list(range(n))


def test_a_batch_just_under_256_kib_is_accepted_and_one_at_256_kib_is_not():
    # The payload is ["<s>"]: four bytes around the string.
    just_under = "x" * (MAX_BATCH_BYTES - 5)
    assert item_batches([just_under], 1) == [f'0 ["{just_under}"]']
    with pytest.raises(InvalidRequest) as caught:
        item_batches([just_under + "x"], 1)
    assert "batch 0 (items 0 to 0) is 256.0 KiB" in caught.value.message


def test_batch_size_is_measured_in_utf8_bytes_not_characters():
    # "é" is one character but two UTF-8 bytes: 131070 of them are 262144 bytes with the brackets.
    fits = "é" * ((MAX_BATCH_BYTES - 6) // 2)
    assert len(item_batches([fits], 1)) == 1
    too_big = fits + "é"
    assert len(f'["{too_big}"]') < MAX_BATCH_BYTES  # under the limit in characters ...
    with pytest.raises(InvalidRequest, match="256 KiB"):  # ... but not in bytes
        item_batches([too_big], 1)
    emoji = "🐍" * (MAX_BATCH_BYTES // 4)  # four bytes each
    with pytest.raises(InvalidRequest, match="256 KiB"):
        item_batches([emoji], 1)


def test_too_big_batch_error_names_the_batch_its_items_and_the_fix():
    items = ["small", "small", "y" * MAX_BATCH_BYTES, "small"]
    with pytest.raises(InvalidRequest) as caught:
        item_batches(items, 2)
    message = caught.value.message
    assert message.startswith("item_list: batch 1 (items 2 to 3) is ")
    assert "smaller than 256 KiB" in message
    assert "lower item_list.batch_size" in message


def test_a_lone_surrogate_item_is_batched_as_escaped_json_not_a_crash():
    # json.loads('"\\ud800"') is a valid str that UTF-8 cannot encode; it must still reach the predictor.
    entries = item_batches(["ok", "\ud800", "é"], 3)
    assert entries[0].isascii()
    assert decoded(entries) == [(0, ["ok", "\ud800", "é"])]
    entries[0].encode()  # storable in Redis

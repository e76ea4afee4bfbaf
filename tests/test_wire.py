"""The backlog entry codec (app/model/wire.py): one format, built and read in one place."""

from __future__ import annotations

import json

from app.model.wire import backlog_entry, entry_batch_id, split_backlog_entry


def test_an_entry_is_the_batch_id_a_space_and_the_body():
    body = json.dumps([{"text": "a line with spaces"}, " ", 3])
    entry = backlog_entry(7, body)
    assert entry == f"7 {body}"  # the format the store's Lua reads (entry_batch_id in common.lua)
    assert split_backlog_entry(entry) == ("7", body)
    assert entry_batch_id(entry) == "7"


def test_an_entry_with_an_empty_body_keeps_its_id():
    assert split_backlog_entry(backlog_entry("12", "")) == ("12", "")

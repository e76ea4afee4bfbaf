"""The store's Lua scripts as files: each says what it takes and touches, and none types again a
name or a limit that Python defines (app/store/scripts.py puts them before common.lua)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from app.model import status, wire
from app.store import job_store
from app.store.scripts import lua_constants, lua_file, with_common

ROOT = Path(__file__).resolve().parent.parent
LUA = resources.files("app.store") / "lua"
FILES = sorted(entry.name.removesuffix(".lua") for entry in LUA.iterdir() if entry.name.endswith(".lua"))
LIMITS = {"LEASE_MS": 30_000, "JOB_LOG_LINES": 10_000}


def header(name: str) -> list[str]:
    """The comment lines a Lua file opens with."""
    lines = lua_file(name).splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]


# A Lua string literal (group 1), or a comment: whichever starts first, as Lua reads them.
STRING_OR_COMMENT = re.compile(r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|--[^\n]*""")


def code_of(text: str, strings: bool = False) -> str:
    """Lua source without its comments, and without its string literals unless `strings`."""
    return STRING_OR_COMMENT.sub(lambda m: m.group(1) if strings and m.group(1) else "", text)


def test_the_scripts_are_the_files_and_every_file_is_a_script():
    assert set(FILES) == {
        *job_store.SCRIPTS,
        "common",
        "job_log_append",
        "job_log_read",
        "retry_link",
        "batch_error",
        "expire_job",
        "forget_code",
    }


@pytest.mark.parametrize("name", FILES)
def test_every_lua_file_opens_with_its_keys_argv_and_the_keys_it_touches(name):
    lines = header(name)
    assert lines[0].startswith(f"-- {name}.lua: "), "the first line names the file and says what it does"
    assert any(re.match(r"-- KEYS\[\d", line) for line in lines), "a line per KEYS position (or range)"
    assert any(re.match(r"-- ARGV\[\d", line) for line in lines), "a line per ARGV position"
    assert name == "common" or any(line.startswith("-- Touches: ") for line in lines)


@pytest.mark.parametrize("name", FILES)
def test_no_status_name_or_task_name_is_typed_in_lua(name):
    text = code_of(lua_file(name), strings=True)  # comments may name a status
    for code in status.PRECEDENCE:
        assert str(code) not in text
    assert wire.RUN_BATCH not in text


def test_every_constant_the_lua_uses_is_defined_by_python():
    defined = set(lua_constants(LIMITS))
    used = {
        name
        for file in FILES
        for name in re.findall(r"\b([A-Z][A-Z0-9_]{2,})\b", code_of(lua_file(file)))
        if name not in ("KEYS", "ARGV")
    }
    assert used <= defined, used - defined
    assert {f"STATUS_{str(code).removeprefix('status_').upper()}" for code in status.PRECEDENCE} <= defined


@pytest.mark.parametrize("name", job_store.SCRIPTS)
def test_the_loader_writes_the_values_from_python_in_place_of_their_names(name):
    source = with_common(name, {"LEASE_MS": 4000, "JOB_LOG_LINES": 5})
    assert source.index("-- common.lua") < source.index(f"-- {name}.lua")
    assert not re.findall(r"\b[A-Z]+_[A-Z_]+\b", code_of(source))  # none left for Lua to look up
    if name == "enqueued":
        code = code_of(source, strings=True)
        assert f"== '{status.ENQUEUING}'" in code and f"end_job('{status.ENQUEUE_FAILED}'" in code
        assert f"\"task\":\"' .. '{wire.RUN_BATCH}' .. '\"," in code
        assert "redis.call('PEXPIRE', lease, 4000)" in code and "-5, -1)" in code


def test_no_python_file_holds_a_lua_script():
    holding = [
        str(path.relative_to(ROOT))
        for folder in ("app", "workers")
        for path in (ROOT / folder).rglob("*.py")
        if "redis.call" in path.read_text(encoding="utf-8")
    ]
    assert holding == []

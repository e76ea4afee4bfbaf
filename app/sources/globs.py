"""Glob patterns matched against whole `s3://bucket/key` strings, with Cortex's rules.

`*` and `?` stay inside one path segment, `**` crosses segments, `[...]`, `[!...]` and `{a,b}`
work, `\\` escapes. Cortex used Go's doublestar library; Python's fnmatch lets `*` cross `/` and
has no `{a,b}`, and pathlib's globbing matches paths segment by segment (so `**.jpg` would not
select `images/img_2.jpg`), hence this small translation to a regular expression.
"""

from __future__ import annotations

import re
from functools import lru_cache


class GlobError(ValueError):
    """A pattern that cannot be compiled."""


def translate(pattern: str) -> str:
    """The regular expression (without anchors) equivalent to `pattern`; raises GlobError."""
    regex, end = _translate(pattern, 0, in_braces=False)
    if end != len(pattern):
        raise GlobError(f"unexpected '{pattern[end]}' at position {end}")
    return regex


def _translate(pattern: str, i: int, in_braces: bool) -> tuple[str, int]:
    out: list[str] = []
    while i < len(pattern):
        char = pattern[i]
        if in_braces and char in ",}":
            return "".join(out), i
        if char == "*":
            double = pattern.startswith("**", i)
            out.append(".*" if double else "[^/]*")
            i += 2 if double else 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            part, i = _char_class(pattern, i)
            out.append(part)
        elif char == "{":
            part, i = _alternatives(pattern, i)
            out.append(part)
        elif char == "\\":
            if i + 1 == len(pattern):
                raise GlobError("a pattern cannot end with '\\'")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "}" or char == "]":
            raise GlobError(f"unmatched '{char}' at position {i}")
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out), i


def _char_class(pattern: str, start: int) -> tuple[str, int]:
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    i += negate
    body_start = i
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a ']' right after '[' or '[!' is a literal
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    if i >= len(pattern):
        raise GlobError(f"unclosed '[' at position {start}")
    body = pattern[body_start:i]
    if not body:
        raise GlobError(f"empty character class at position {start}")
    members = _class_members(body)
    if negate:
        return f"[^/{members}]", i + 1
    return f"(?!/)[{members}]", i + 1


def _class_members(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(re.escape(body[i + 1]))
            i += 2
        else:
            out.append("-" if body[i] == "-" else re.escape(body[i]))
            i += 1
    return "".join(out)


def _alternatives(pattern: str, start: int) -> tuple[str, int]:
    options, i = [], start + 1
    while True:
        part, i = _translate(pattern, i, in_braces=True)
        options.append(part)
        if i >= len(pattern):
            raise GlobError(f"unclosed '{{' at position {start}")
        if pattern[i] == "}":
            return "(?:" + "|".join(options) + ")", i + 1
        i += 1  # past ','


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern:
    """A compiled pattern to `fullmatch` against `s3://bucket/key`; raises GlobError."""
    try:
        return re.compile(translate(pattern), re.DOTALL)
    except re.error as err:  # e.g. a reversed range such as [z-a]
        raise GlobError(str(err)) from None


def selects(path: str, includes: list[str], excludes: list[str]) -> bool:
    """Cortex's filter: kept if it matches an include (when there are any) and no exclude."""
    if includes and not any(compile_glob(p).fullmatch(path) for p in includes):
        return False
    return not any(compile_glob(p).fullmatch(path) for p in excludes)

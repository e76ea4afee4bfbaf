"""Summarise py-spy's raw (collapsed) stacks: where each process's samples are, by function.

    .venv/bin/python bench/profile_summary.py DIR/batchery.txt [--top 25] [--match run_batch]

For each process (the worker's main process and each pool process): its samples, and the
functions with the most samples anywhere on the stack (inclusive) and at the top (self).
`--match` keeps only the stacks through a frame containing the text (e.g. one task).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def short(frame: str) -> str:
    """`function (package/module.py)`, without the line number or the site-packages path."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found["file"].split("site-packages/")[-1]
    return f"{found['name']} ({path})"


def summarise(path: Path, top: int, match: str) -> None:
    """Print, per process, the inclusive and self sample counts of the busiest functions."""
    by_process: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        process, frames = frames[0], frames[1:]
        if match and not any(match in f for f in frames):
            continue
        by_process[process].append(([short(f) for f in frames], int(count)))
    for process, stacks in sorted(by_process.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        total = sum(c for _, c in stacks)
        inclusive: collections.Counter = collections.Counter()
        self_time: collections.Counter = collections.Counter()
        for frames, count in stacks:
            for name in set(frames):
                inclusive[name] += count
            if frames:
                self_time[frames[-1]] += count
        print(f"\n== {process[:120]}  ({total} samples)")
        print("   inclusive:")
        for name, count in inclusive.most_common(top):
            print(f"   {100 * count / total:5.1f}%  {name}")
        print("   self:")
        for name, count in self_time.most_common(top // 2):
            print(f"   {100 * count / total:5.1f}%  {name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="")
    args = parser.parse_args(argv)
    summarise(args.path, args.top, args.match)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""When each task was received by the worker's main process and ran in a pool process, and a summary.

    .venv/bin/python bench/load.py --items 20000 --only ceiling batchery --timeline /tmp/tl
    .venv/bin/python bench/timeline.py /tmp/tl

With `--timeline DIR`, bench/load.py starts its worker with BENCH_TIMELINE_DIR=DIR, and
bench/worker.py records Celery's `task_received` (main process), `task_prerun` and
`task_postrun` (pool processes) with the wall-clock time, one file per process. The summary, per
task name: medians of received → started (the hand-over to a pool process), started → ended (the
task in the pool) and ended → the next task received; the share of the run during which 0, 1, 2...
tasks were running; and the share of the tasks each pool process ran.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import collections
import os
import statistics
import sys
import time
from pathlib import Path

FLUSH_EVERY = 500


class Recorder:
    """This process's events, appended to DIR/<pid>.txt every FLUSH_EVERY events and at exit."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.lines: list[str] = []
        atexit.register(self.flush)

    def note(self, event: str, task_id: str, name: str) -> None:
        self.lines.append(f"{event} {task_id} {name} {time.time():.6f}\n")
        if len(self.lines) >= FLUSH_EVERY:
            self.flush()

    def flush(self, **kwargs: object) -> None:
        if self.lines:
            with (self.directory / f"{os.getpid()}.txt").open("a") as out:
                out.write("".join(self.lines))
            self.lines.clear()


def install(directory: str) -> None:
    """Record every task's events into `directory` (from the worker's Celery app module)."""
    from celery import signals

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    recorders: dict[int, Recorder] = {}

    def recorder() -> Recorder:  # one per process: a forked pool process starts its own
        return recorders.setdefault(os.getpid(), Recorder(path))

    def received(request=None, **kwargs):
        recorder().note("received", request.id, request.name)

    def started(task_id=None, task=None, **kwargs):
        recorder().note("started", task_id, task.name)

    def ended(task_id=None, task=None, **kwargs):
        recorder().note("ended", task_id, task.name)

    def shutdown(**kwargs):
        recorder().flush()

    signals.task_received.connect(received, weak=False)
    signals.task_prerun.connect(started, weak=False)
    signals.task_postrun.connect(ended, weak=False)
    signals.worker_process_shutdown.connect(shutdown, weak=False)


def load(directory: Path) -> dict[str, dict[str, dict]]:
    """{task name: {task id: {event: time, "process": pid of the pool process}}}."""
    tasks: dict[str, dict[str, dict]] = collections.defaultdict(lambda: collections.defaultdict(dict))
    for file in directory.glob("*.txt"):
        for line in file.read_text().splitlines():
            event, task_id, name, at = line.split()
            tasks[name][task_id][event] = float(at)
            if event == "started":
                tasks[name][task_id]["process"] = file.stem
    return tasks


def occupancy(intervals: list[tuple[float, float]]) -> dict[int, float]:
    """The share of the time from the first start to the last end with n intervals open, per n."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    spent: collections.Counter = collections.Counter()
    running, last = 0, edges[0][0]
    for at, step in edges:
        spent[running] += at - last
        running, last = running + step, at
    total = sum(spent.values()) or 1.0
    return {n: spent[n] / total for n in sorted(spent)}


def ms(values: list[float]) -> str:
    """The median of durations in seconds, in milliseconds."""
    return f"{1000 * statistics.median(values):.3f} ms"


def summarise(name: str, tasks: dict[str, dict]) -> None:
    """Print one task name's medians, occupancy and share per pool process."""
    done = [t for t in tasks.values() if {"received", "started", "ended"} <= t.keys()]
    if not done:
        return
    received = sorted(t["received"] for t in done)
    after_end = []
    for t in done:
        i = bisect.bisect_right(received, t["ended"])
        if i < len(received):
            after_end.append(received[i] - t["ended"])
    print(f"{name}: {len(done):,} tasks")
    print(f"  received -> started (hand-over), median   {ms([t['started'] - t['received'] for t in done])}")
    print(f"  started -> ended (in the pool), median    {ms([t['ended'] - t['started'] for t in done])}")
    if after_end:
        print(f"  ended -> next task received, median       {ms(after_end)}")
    running = occupancy([(t["started"], t["ended"]) for t in done])
    print("  share of the time with n tasks running    " + ", ".join(f"{n}: {s:.0%}" for n, s in running.items()))
    per_process = collections.Counter(t["process"] for t in done)
    shares = ", ".join(f"{count / len(done):.0%}" for _, count in per_process.most_common())
    print(f"  share of the tasks per pool process       {shares}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    for name, tasks in sorted(load(args.directory).items()):
        summarise(name, tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

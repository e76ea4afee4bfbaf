"""A throwaway memory cgroup with a limit, for tests in which the kernel's OOM killer really kills.

Needs root (or a delegated cgroup) and a writable memory hierarchy: cgroup v1 (a `memory`
hierarchy, `memory.limit_in_bytes`) or v2 (the unified hierarchy, `memory.max`). The new cgroup is
made under this process's own memory cgroup where the kernel allows it, else under the root of
the hierarchy. When neither works, `MemoryCgroup` raises `CgroupUnavailable` saying why: the OOM
tests fail then, loudly, rather than being skipped.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import uuid
from pathlib import Path

from tests.services import wait_for
from workers.oom import PROC, cgroup_dir, cgroup_mounts, read_oom_kills


class CgroupUnavailable(RuntimeError):
    """No memory cgroup could be set up here."""


def _parents() -> list[tuple[Path, str]]:
    """Where a new memory cgroup may go, best first: (directory, `v1` or `v2`)."""
    found = []
    cgroups = (PROC / "self" / "cgroup").read_text().splitlines()
    for root, point, fstype, options in cgroup_mounts(PROC):
        for line in cgroups:
            _, controllers, path = line.split(":", 2)
            if fstype == "cgroup" and "memory" in options.split(",") and "memory" in controllers.split(","):
                found += [(cgroup_dir(point, root, path), "v1"), (Path(point), "v1")]
            elif fstype == "cgroup2" and controllers == "":
                found += [(cgroup_dir(point, root, path), "v2"), (Path(point), "v2")]
    unique = []
    for parent in found:
        if parent not in unique and parent[0].is_dir():
            unique.append(parent)
    return unique


class MemoryCgroup:
    """A new memory cgroup limited to `limit_mib`; processes started through `wrapper()` (and
    their children) run in it."""

    def __init__(self, limit_mib: int):
        self.limit = limit_mib << 20
        errors = []
        for parent, version in _parents():
            try:
                self._make(parent, version)
                return
            except OSError as err:
                errors.append(f"{parent} ({version}): {err}")
        tried = "; ".join(errors) or "no cgroup v1 memory hierarchy nor cgroup v2 unified hierarchy is mounted"
        raise CgroupUnavailable(
            "cannot set up a memory cgroup for the OOM tests (they need root and a writable cgroup v1 "
            f"memory hierarchy or cgroup v2 with the memory controller): {tried}"
        )

    def _make(self, parent: Path, version: str) -> None:
        path = parent / f"batchery-test-{uuid.uuid4().hex[:8]}"
        if version == "v2":
            subtree = parent / "cgroup.subtree_control"
            if "memory" not in subtree.read_text().split():
                subtree.write_text("+memory")  # EBUSY if `parent` has processes (cgroup v2's rule)
        path.mkdir()
        try:
            if version == "v1":
                (path / "memory.limit_in_bytes").write_text(str(self.limit))
                self._no_swap(path / "memory.memsw.limit_in_bytes")  # after the limit: it must stay >= it
                self.counter = path / "memory.oom_control"
            else:
                (path / "memory.max").write_text(str(self.limit))
                self._no_swap(path / "memory.swap.max", "0")
                self.counter = path / "memory.events"
        except OSError:
            path.rmdir()
            raise
        self.path, self.version = path, version

    def _no_swap(self, file: Path, value: str = "") -> None:
        # Swapping would turn the OOM kill into a long crawl; kernels without swap accounting lack the file.
        with contextlib.suppress(OSError):
            file.write_text(value or str(self.limit))

    def wrapper(self) -> list[str]:
        """A command prefix that moves itself into the cgroup, then execs the rest of its arguments."""
        procs = shlex.quote(str(self.path / "cgroup.procs"))
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        return read_oom_kills(self.counter) or 0

    def remove(self) -> None:
        """Remove the cgroup, once the processes in it are gone (stop them first)."""
        wait_for(lambda: not self.pids(), timeout=60, interval=0.1, what=f"the processes in {self.path} to exit")
        wait_for(self._rmdir, timeout=30, interval=0.1, what=f"{self.path} to be removed")

    def _rmdir(self) -> bool:
        try:
            os.rmdir(self.path)  # a cgroup directory goes with rmdir, whatever its control files
        except FileNotFoundError:
            return True
        except OSError:  # EBUSY for a moment after its last process exits
            return False
        return True

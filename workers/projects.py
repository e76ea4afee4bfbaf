"""A deployed project's files on the worker's own disk: fetched from the job store once per host and
version, and run from there.

The deploy stores the whole project (cortex.yaml's folder: models, data, helper modules) once per
content in Redis, as a gzip-compressed tar named by its hash (`keys.project`). A worker that runs a
predictor of an API deployed so reads that blob once, unpacks it under
`<BATCHERY_PROJECT_CACHE>/<project_id>/` and runs the predictor there: no shared filesystem, and the
same path on no two machines needed.

Unpacking goes into a temporary folder beside the final one and is renamed into place, so a folder
under its id is always whole; two pool processes racing both succeed (one rename wins, the other
drops its copy). The blob is not trusted: its hash must be its id, and a member that is not a plain
file or folder, or whose path leaves the folder, refuses the whole blob.

Versions in use stay, unused ones go: each process holds a shared `flock` on `<project_id>.lock`
(beside the folder) while it has a predictor of that version loaded, and touches the file when it
loads or lets go of one (the mtime says when the version was last used). The cleanup removes a
folder only under an exclusive lock taken without waiting (so none is in use on this host) and
when its last use is older than BATCHERY_PROJECT_CACHE_SECONDS. It runs when the worker starts and
every CLEAN_EVERY loads in each pool process, and reads one directory: cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from app import project_archive

log = logging.getLogger(__name__)

PROJECT_ID = re.compile(r"^[0-9a-f]{32}$")
TEMP_PREFIX = ".unpacking-"
CLEAN_EVERY = 50  # predictor loads in a process between two cleanups


class ProjectError(Exception):
    """A deployed project could not be fetched or unpacked on this worker."""


class ProjectCache:
    """The deployed projects unpacked on this host, under `root`; `read(project_id)` gives a
    project's blob from the job store (None if it has none)."""

    def __init__(self, root: str | Path, keep_seconds: float, read: Callable[[str], bytes | None]):
        self.root = Path(root)
        self.keep_seconds = keep_seconds
        self.read = read
        self._held: dict[str, int] = {}  # project_id -> its lock file, held LOCK_SH by this process
        self._loads = 0

    def folder(self, project_id: str) -> Path:
        """The project's folder on this host, fetched and unpacked on first use, held in use by this
        process until `release`; raises ProjectError (no such blob, a bad blob, a full disk)."""
        if not isinstance(project_id, str) or not PROJECT_ID.match(project_id):
            raise ProjectError(f"the API's project_id {project_id!r} is not a project id: deploy the API again")
        held_before = project_id in self._held
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._hold(project_id)
            folder = self.root / project_id
            if not folder.is_dir():
                self._fetch(project_id, folder)
        except BaseException as err:
            if not held_before:  # nothing of it runs here: the cleanup may have its lock file
                self.release(set(self._held) - {project_id})
            if isinstance(err, OSError):
                raise ProjectError(f"cannot unpack the project {project_id} under {self.root}: {err}") from err
            raise
        self._loads += 1
        if self._loads % CLEAN_EVERY == 1:  # the first load of a process, then every CLEAN_EVERY
            self.clean()
        return folder

    def release(self, in_use: Iterable[str]) -> None:
        """Let go of the versions this process holds that are not in `in_use` (their predictors
        were dropped), marking them as used now."""
        keep = set(in_use)
        for project_id in [held for held in self._held if held not in keep]:
            fd = self._held.pop(project_id)
            with contextlib.suppress(OSError):
                os.utime(fd)
            os.close(fd)  # and with it the shared lock

    def held(self) -> set[str]:
        """The versions this process holds in use."""
        return set(self._held)

    def _lock_path(self, project_id: str) -> Path:
        return self.root / f"{project_id}.lock"

    def _hold(self, project_id: str) -> None:
        """Take the version's shared lock (once per process) and mark it as used now."""
        fd = self._held.get(project_id)
        if fd is None:
            fd = self._held[project_id] = _locked(self._lock_path(project_id), fcntl.LOCK_SH)
        os.utime(fd)

    def _fetch(self, project_id: str, folder: Path) -> None:
        started = time.perf_counter()
        blob = self.read(project_id)
        if blob is None:
            raise ProjectError(
                f"the project {project_id} of this API is no longer in the job store (the API was deployed "
                "again and this version cleaned, or Redis lost its data): deploy the API again and resubmit"
            )
        if project_archive.project_id(blob) != project_id:
            raise ProjectError(f"the project {project_id} in the job store does not match its id: deploy the API again")
        temp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{project_id}-", dir=self.root))
        try:
            unpack(blob, temp)
            temp.chmod(0o755)
            os.rename(temp, folder)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if not folder.is_dir():
                raise
            return  # another process of this host unpacked it first: its copy is the same
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        log.info(
            "project %s: fetched and unpacked (%d bytes) in %.3fs", project_id, len(blob), time.perf_counter() - started
        )

    def clean(self, now: float | None = None) -> list[str]:
        """Remove the versions unused on this host for `keep_seconds` (and unpacking leftovers as
        old); returns the ids removed. Never raises: a cleanup that fails is tried again later."""
        now = time.time() if now is None else now
        removed: list[str] = []
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return removed
        for entry in entries:
            try:
                if PROJECT_ID.match(entry.name) and entry.is_dir() and self._remove_if_unused(entry.name, now):
                    removed.append(entry.name)
                elif entry.suffix == ".lock" and PROJECT_ID.match(entry.stem) and not (self.root / entry.stem).exists():
                    self._remove_if_unused(entry.stem, now, create=False)  # of a version whose fetch failed
                elif entry.name.startswith(TEMP_PREFIX) and now - entry.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(entry, ignore_errors=True)  # a process died while unpacking
            except OSError as err:
                log.warning("project cache: cannot clean %s: %s", entry.name, err)
        if removed:
            log.info("project cache: removed %d unused version(s): %s", len(removed), ", ".join(removed))
        return removed

    def _remove_if_unused(self, project_id: str, now: float, create: bool = True) -> bool:
        if project_id in self._held:
            return False
        lock = self._lock_path(project_id)
        try:
            fd = _locked(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, create)
        except BlockingIOError:
            return False  # a process of this host has a predictor of it loaded
        except FileNotFoundError:
            return False  # removed meanwhile, with its version
        try:
            if now - os.fstat(fd).st_mtime <= self.keep_seconds:
                return False
            if (self.root / project_id).exists():
                # moved aside first: a folder under its id is whole or absent, never half removed
                doomed = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{project_id}-", dir=self.root))
                os.rename(self.root / project_id, doomed / project_id)
                shutil.rmtree(doomed, ignore_errors=True)
            lock.unlink()  # a process waiting on it sees another file by that name and locks that (_locked)
            return True
        finally:
            os.close(fd)


def _locked(path: Path, operation: int, create: bool = True) -> int:
    """An open descriptor of the lock file at `path` holding `flock(operation)`, on the file that
    has that name once locked (a cleanup may have removed the one opened); raises OSError,
    BlockingIOError when LOCK_NB could not lock it, FileNotFoundError when not `create` and none is there."""
    while True:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            fcntl.flock(fd, operation)
            opened, named = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            if not create:
                raise
            continue
        except BaseException:
            os.close(fd)
            raise
        if (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino):
            return fd
        os.close(fd)


def unpack(blob: bytes, folder: Path) -> None:
    """Unpack a project's gzip-compressed tar into `folder`; raises ProjectError, without unpacking
    anything, for a member that is not a regular file or folder or whose path leaves the folder."""
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check(member)
            _check_room(sum(member.size for member in members), folder)
            # the standard library's own checks too ("data": no links out, no devices, sane modes)
            tar.extractall(folder, members=members, filter="data")
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as err:  # the disk's errors are OSErrors
        raise ProjectError(f"the deployed project is not a valid gzip-compressed tar: {err}") from err


def _check(member: tarfile.TarInfo) -> None:
    """Refuse a member that is not a regular file or folder, or whose path is absolute or climbs out."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "not a regular file or folder"
        raise ProjectError(f"the deployed project is refused: {name!r} is {kind}")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise ProjectError(f"the deployed project is refused: the path {name!r} leaves the project's folder")


def _check_room(size: int, folder: Path) -> None:
    """Refuse a project larger unpacked than the free space of the cache's disk (a gzip bomb would
    otherwise fill it, and every other version's fetch would fail with it)."""
    free = shutil.disk_usage(folder).free
    if size > free:
        raise ProjectError(
            f"the deployed project holds {size} bytes unpacked, more than the {free} bytes free where the "
            "worker unpacks projects (BATCHERY_PROJECT_CACHE): free some space or point it elsewhere"
        )

"""A project as deployed: the folder of cortex.yaml packed into one reproducible archive, and an
uploaded archive unpacked safely.

The archive is what every worker fetches from the job store and unpacks into its cache, so that
no worker needs the path the project was deployed from. It is a gzip-compressed tar (PAX) of the
project's regular files and folders, every path relative to the project root with `/` between
names, sorted by path, with mtime 0, uid/gid 0 and modes 0o644 / 0o755: the same files give the
same bytes, and `project_id` (the first 32 hex digits of the SHA-256 of those bytes) names the
content. Left out: what `.cortexignore` matches (rules in `IgnoreRules`), the folders code.py
leaves out (`__pycache__`, `node_modules`, `site-packages`, hidden folders such as `.git`, and
virtualenvs).

Standard library only: the CLI packs a folder with it before it uploads it.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages"}  # as app/store/code.py
IGNORE_FILE = ".cortexignore"
CHUNK = 1024 * 1024
MAX_PROJECT_BYTES = 256 * 1024 * 1024  # BATCHERY_MAX_PROJECT_BYTES' default: the packed archive at most


class ProjectError(Exception):
    """A project that cannot be packed or unpacked; `status` is the HTTP status it answers (400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class Packed(NamedTuple):
    """A packed project: its id, the archive's bytes, and the paths of its files."""

    project_id: str
    blob: bytes
    files: list[str]


def project_id(blob: bytes) -> str:
    """The id of a packed project: the first 32 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(blob).hexdigest()[:32]


class IgnoreRules:
    """`.cortexignore`'s patterns, read with fnmatch, as Cortex read them (gitignore-like):

    - one pattern a line; blank lines and lines starting with `#` are skipped;
    - a pattern without `/` matches a file or folder of that name anywhere (`*.ckpt`, `data`);
    - a pattern with `/` matches the path from the project root (a leading `/` is dropped);
    - a trailing `/` matches folders only; a folder matched leaves out everything in it;
    - `!` negation is not supported (the line is taken as a pattern starting with `!`).
    """

    def __init__(self, text: str = ""):
        self.patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    @classmethod
    def of(cls, folder: Path) -> IgnoreRules:
        """The rules of the folder's `.cortexignore` (none if it has none)."""
        path = folder / IGNORE_FILE
        return cls(path.read_text(encoding="utf-8", errors="replace") if path.is_file() else "")

    def ignored(self, relative: str, is_dir: bool) -> bool:
        """Whether the path (POSIX, relative to the root) is left out."""
        name = relative.rsplit("/", 1)[-1]
        for pattern in self.patterns:
            if pattern.endswith("/") and not is_dir:
                continue
            anchored = "/" in pattern.rstrip("/")  # a path from the root, else a name anywhere
            if fnmatch.fnmatchcase(relative if anchored else name, pattern.strip("/")):
                return True
        return False


def _skipped_dir(path: Path) -> bool:
    return path.name.startswith(".") or path.name in SKIPPED_DIRS or (path / "pyvenv.cfg").exists()


def project_files(folder: Path) -> Iterator[tuple[str, Path, bool]]:
    """The (relative path, path, is a folder) of what a project packs, sorted by path. A link to a
    file is packed as the file it points to; a link to a folder is left out (it could loop)."""
    rules = IgnoreRules.of(folder)

    def walk(current: Path) -> Iterator[tuple[str, Path, bool]]:
        for path in sorted(current.iterdir(), key=lambda p: p.name):
            relative = path.relative_to(folder).as_posix()
            if path.is_dir():
                if path.is_symlink() or _skipped_dir(path) or rules.ignored(relative, True):
                    continue
                yield relative, path, True
                yield from walk(path)
            elif path.is_file() and not rules.ignored(relative, False):
                yield relative, path, False

    entries = list(walk(folder))
    return iter(sorted(entries, key=lambda entry: entry[0]))


def pack(folder: str | Path, max_bytes: int | None = None) -> Packed:
    """Pack the project folder (as the module docstring says); raises ProjectError (413) when the
    archive is over `max_bytes`, or (400) when a file cannot be read."""
    folder = Path(folder).resolve()
    buffer = io.BytesIO()
    files: list[str] = []
    # gzip's header holds a time and a name: fixed, so that the same files make the same bytes
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="", compresslevel=6) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, path, is_dir in project_files(folder):
            _add(tar, relative, path, is_dir)
            if not is_dir:
                files.append(relative)
            if max_bytes is not None and buffer.tell() > max_bytes:
                raise _too_large(max_bytes)
    blob = buffer.getvalue()
    if max_bytes is not None and len(blob) > max_bytes:
        raise _too_large(max_bytes)
    return Packed(project_id(blob), blob, files)


def _too_large(max_bytes: int) -> ProjectError:
    return ProjectError(
        f"the project is over BATCHERY_MAX_PROJECT_BYTES ({max_bytes} bytes compressed): leave large "
        "files out with .cortexignore and have the predictor read them from S3",
        413,
    )


def _add(tar: tarfile.TarFile, relative: str, path: Path, is_dir: bool) -> None:
    info = tarfile.TarInfo(relative)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if is_dir:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.mode = 0o644
    try:
        with path.open("rb") as source:
            info.size = os.fstat(source.fileno()).st_size
            tar.addfile(info, source)
    except OSError as err:
        raise ProjectError(f"cannot read {relative} in the project: {err.strerror or err}") from None


# --- unpacking an upload ------------------------------------------------------------------------


def unpack(upload: IO[bytes], target: Path, max_bytes: int) -> None:
    """Unpack an uploaded project (a .zip, a .tar or a .tar.gz, told apart by their first bytes)
    into the empty folder `target`, checking every entry; raises ProjectError: 400 a path with
    `..`, an absolute path, a link, a device or an unreadable archive; 413 more than 4x
    `max_bytes` once uncompressed (a zip bomb)."""
    head = upload.read(4)
    upload.seek(0)
    budget = _Budget(4 * max_bytes)
    if head.startswith(b"PK"):
        _unzip(upload, target, budget)
    else:
        _untar(upload, target, budget)


class _Budget:
    """The bytes an upload may take once unpacked, counted as they are written."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise ProjectError(
                f"the project is over {self.limit} bytes once uncompressed (4x BATCHERY_MAX_PROJECT_BYTES)", 413
            )


def safe_path(name: str) -> str:
    """An archive entry's name as a relative POSIX path; raises ProjectError (400) for an absolute
    path or one with `..`."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PurePosixPath(posix).is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise ProjectError(f"{name}: an absolute path in the archive (paths must be relative to the project)")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ProjectError(f"{name}: a path with '..' in the archive (paths must stay inside the project)")
    return "/".join(parts)


def _untar(upload: IO[bytes], target: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(fileobj=upload, mode="r:*") as tar:
            for member in tar:
                relative = safe_path(member.name)
                if member.issym() or member.islnk():
                    raise ProjectError(f"{member.name}: a link in the archive (pack the file it points to instead)")
                if member.isdir():
                    _folder(target, relative)
                elif member.isfile():
                    source = tar.extractfile(member)
                    if source is None:
                        raise ProjectError(f"{member.name}: cannot be read from the archive")
                    _write(target, relative, source, budget)
                else:
                    raise ProjectError(f"{member.name}: not a regular file or folder (devices and pipes are refused)")
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as err:
        raise ProjectError(f"the upload is not a readable .tar.gz, .tar or .zip: {err}") from None


def _unzip(upload: IO[bytes], target: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(upload) as archive:
            for entry in archive.infolist():
                relative = safe_path(entry.filename)
                mode = entry.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ProjectError(f"{entry.filename}: a link in the archive (pack the file it points to instead)")
                if entry.is_dir():
                    _folder(target, relative)
                    continue
                with archive.open(entry) as source:
                    _write(target, relative, source, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as err:
        raise ProjectError(f"the upload is not a readable .zip: {err}") from None


def _folder(target: Path, relative: str) -> None:
    if relative:
        (target / relative).mkdir(parents=True, exist_ok=True)


def _write(target: Path, relative: str, source: IO[bytes], budget: _Budget) -> None:
    if not relative:
        return
    path = target / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        while chunk := source.read(CHUNK):
            budget.spend(len(chunk))  # counted as written: the sizes an archive declares can lie
            out.write(chunk)


def project_root(folder: Path) -> Path:
    """The folder of an unpacked upload holding cortex.yaml: its root, or its single top folder;
    raises ProjectError (400) if neither has one."""
    if (folder / "cortex.yaml").is_file():
        return folder
    tops = [path for path in folder.iterdir() if not path.name.startswith(".") and path.name != "__MACOSX"]
    if len(tops) == 1 and tops[0].is_dir() and (tops[0] / "cortex.yaml").is_file():
        return tops[0]
    raise ProjectError("the upload has no cortex.yaml at its root (nor in a single top folder)")


def remove(folder: Path) -> None:
    """Delete a folder and what it holds, ignoring what is already gone."""
    shutil.rmtree(folder, ignore_errors=True)

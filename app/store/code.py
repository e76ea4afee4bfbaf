"""A predictor's code as deployed: the Python files of its project, read at deploy.

On Cortex each API ran in its own container, built from the project as it was deployed. Batchery's
workers run many APIs in one process, and read the predictor's folder from their own disk. Two
things went wrong with that: two APIs whose folders both hold a `helpers.py` shared whichever one a
process imported first, and a file edited after deploy reached a running job's next fresh process
(a job ran two versions of its code). So the deploy reads the project's `.py` files once (the
project is the folder of cortex.yaml, as on Cortex; the predictor's folder if it lies outside),
the API's `api_id` hashes them all, the registry keeps them in Redis under that id, and the
workers import a predictor's modules from there, each predictor in a namespace of its own
(workers/namespace.py). Other files (models, labels) are read from disk when the predictor opens
them, as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dotenv

from app.errors import DeployError

MAX_BYTES = 16 * 1024 * 1024  # a guard against a predictor placed at the root of a large tree
SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages"}


def collect(folder: Path) -> dict[str, str]:
    """The `.py` files under the project folder, by POSIX path relative to it; raises DeployError
    when one cannot be read as UTF-8 or they hold more than MAX_BYTES."""
    sources: dict[str, str] = {}
    total = 0
    for path in sorted(_python_files(folder)):
        relative = path.relative_to(folder).as_posix()
        try:
            sources[relative] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DeployError(f"cannot read {relative} in the project: {err}") from None
        total += len(sources[relative])
        if total > MAX_BYTES:
            raise DeployError(
                f"the project folder {folder.name}/ holds more than {MAX_BYTES // 2**20} MiB of Python "
                "files, all deployed with the predictor: put cortex.yaml, the predictor and its modules "
                "in a folder of their own"
            )
    return sources


def _python_files(folder: Path):
    for path in folder.iterdir():
        if path.is_dir() and not _skipped(path):
            yield from _python_files(path)
        elif path.suffix == ".py" and path.is_file():
            yield path


def _skipped(folder: Path) -> bool:
    # hidden folders (.git, .venv) and virtualenvs hold no module the predictor imports by a path of its folder
    return folder.name.startswith(".") or folder.name in SKIPPED_DIRS or (folder / "pyvenv.cfg").exists()


def digest(sources: dict[str, str]) -> bytes:
    """A hash of the files and their paths (an edit of any of them makes a new `api_id`)."""
    hashed = hashlib.sha256()
    for relative in sorted(sources):
        hashed.update(relative.encode() + b"\0" + sources[relative].encode() + b"\0")
    return hashed.digest()


def read_dotenv(folder: Path) -> dict[str, str]:
    """The variables of the project's `.env` (Cortex: `VARIABLE=value` lines, for the predictor's
    environment), read with python-dotenv; a name without a value is left out."""
    path = folder / ".env"
    if not path.is_file():
        return {}
    return {name: value for name, value in dotenv.dotenv_values(path, interpolate=False).items() if value is not None}

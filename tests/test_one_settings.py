"""One Settings: the server's environment variables are read in app/config.py only, and each is
in the README's one table of them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where the server's code lives; workers/namespace.py sets a predictor's own variables around its
# calls, on purpose, and reads none of Batchery's
CHECKED = ["workers", "app"]
ALLOWED = {"app/config.py", "workers/namespace.py"}
READS = re.compile(r"os\.environ|os\.getenv|getenv\(")


def configuration_table() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def test_every_variable_settings_reads_is_in_the_readme_table():
    names = set(re.findall(r'env\.get\("([A-Z0-9_]+)"', (ROOT / "app" / "config.py").read_text()))
    assert "BATCHERY_PREDICTOR_CACHE" in names
    table = configuration_table()
    assert {name for name in names if f"`{name}`" not in table} == set()


def test_no_server_module_but_the_settings_reads_the_environment():
    readers = {
        path.relative_to(ROOT).as_posix()
        for folder in CHECKED
        for path in (ROOT / folder).rglob("*.py")
        if READS.search(path.read_text())
    }
    assert readers - ALLOWED == set()

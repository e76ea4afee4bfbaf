"""The README and docs/ as a newcomer reads them on a fresh clone: every link and example file is in
the repository, the example jobs are valid submissions, and the architecture page names every package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.web.schemas import decode_body, load_submission

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
EXAMPLE_FILE = re.compile(r"examples/[\w./-]+\.(?:json|yaml|py)")


def relative_links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that are neither URLs nor anchors in the page."""
    targets = [target.split("#")[0] for target in LINK.findall(page.read_text())]
    return [target for target in targets if target and not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_to_a_file_in_the_repository(page):
    for target in relative_links(page):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{page.name} links {target}, outside the repository"
        assert path.exists(), f"{page.name} links {target}, which does not exist"


def test_every_example_file_the_readme_names_exists():
    named = set(EXAMPLE_FILE.findall((ROOT / "README.md").read_text()))
    assert {"examples/sum/job.json", "examples/sum/bad.json", "examples/cortex.yaml"} <= named
    assert sorted(name for name in named if not (ROOT / name).is_file()) == []


@pytest.mark.parametrize("name", ["job.json", "bad.json"])
def test_the_walkthroughs_example_jobs_are_valid_submissions(name):
    submission = load_submission(decode_body((ROOT / "examples" / "sum" / name).read_bytes()))
    assert submission["workers"] == 2


def test_the_failing_example_job_retries_into_a_dead_letter_queue():
    submission = load_submission(decode_body((ROOT / "examples" / "sum" / "bad.json").read_bytes()))
    assert submission["sqs_dead_letter_queue"]["arn"].endswith(":sum-failed")  # the README reads that list
    assert any(not all(isinstance(n, int) for n in item) for item in submission["item_list"]["items"])


def test_the_architecture_page_opens_with_a_mermaid_picture_of_the_layers():
    text = (ROOT / "docs" / "architecture.md").read_text()
    first_section = text.split("\n## ", 2)[1]
    assert "```mermaid" in first_section


def test_the_architecture_table_names_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(path.parent for path in (ROOT / "app").glob("*/__init__.py"))
    for package in [*packages, ROOT / "workers"]:
        folder = f"`{package.relative_to(ROOT).as_posix()}/`"
        assert f"\n| {folder} |" in text, f"docs/architecture.md has no row for {folder}"

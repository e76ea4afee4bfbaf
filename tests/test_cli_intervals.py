"""The CLI's poll intervals have a minimum: 0 or a negative value is refused, saying what is allowed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import MIN_INTERVAL, main


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "sum", "a-job", "--follow", "--interval", "0"],
        ["logs", "sum", "a-job", "--interval", "-1"],
        ["get", "sum", "a-job", "--watch", "--interval", "0.01"],
    ],
    ids=["logs-zero", "logs-negative", "get-watch-too-short"],
)
def test_an_interval_under_the_minimum_is_refused_before_anything_is_polled(args):
    # the URL of nothing: had the command run, it would say it cannot reach the API
    result = CliRunner().invoke(main, [*args, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--interval'" in result.output
    assert f"is not in the range x>={MIN_INTERVAL}" in result.output
    assert MIN_INTERVAL == 0.1


def test_the_help_says_the_minimum():
    result = CliRunner().invoke(main, ["logs", "--help"])
    assert f"(at least {MIN_INTERVAL})" in " ".join(result.output.split())

"""The local stack listens on 127.0.0.1 unless BIND says otherwise; containers keep 0.0.0.0."""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

from tests.services import ROOT

STACK = ROOT / "scripts" / "stack.py"


@pytest.fixture(scope="module")
def stack_module():
    spec = importlib.util.spec_from_file_location("stack_for_bind", STACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words(command: str, env: dict) -> list[str]:
    """The words the shell runs for a Procfile command, with `env` (and PATH) only."""
    run = "printf '%s\\n' " + command
    done = subprocess.run(["sh", "-c", run], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True)
    return done.stdout.splitlines()


def test_make_up_listens_on_this_machine_only_by_default(stack_module):
    config = stack_module.Config({})
    assert config.env["BIND"] == "127.0.0.1"
    assert config.api_url == f"http://127.0.0.1:{config.port}"
    assert "listen on 127.0.0.1 (this machine only)" in config.listening()
    assert "BIND=0.0.0.0" in config.listening()  # says how to open it up


def test_bind_opens_the_stack_and_says_what_guards_it(stack_module):
    config = stack_module.Config({"BIND": "0.0.0.0"})
    assert config.env["BIND"] == "0.0.0.0"
    assert config.api_url == f"http://127.0.0.1:{config.port}"  # reached from here on the loopback
    assert "set BATCHERY_API_TOKEN and FLOWER_BASIC_AUTH" in config.listening()
    guarded = stack_module.Config({"BIND": "0.0.0.0", "BATCHERY_API_TOKEN": "t", "FLOWER_BASIC_AUTH": "u:p"})
    assert guarded.listening() == "the API and Flower listen on 0.0.0.0 (BIND)"
    one = stack_module.Config({"BIND": "10.1.2.3"})
    assert one.api_url == f"http://10.1.2.3:{one.port}" and one.flower_url == f"http://10.1.2.3:{one.flower_port}"


def test_the_procfile_listens_where_bind_says_and_on_every_address_without_it(stack_module):
    commands = stack_module.procfile()
    assert "0.0.0.0:8080" in words(commands["web"], {})  # a container: every address
    assert "--address=0.0.0.0" in words(commands["flower"], {})
    assert "127.0.0.1:8080" in words(commands["web"], {"BIND": "127.0.0.1"})
    assert "--address=127.0.0.1" in words(commands["flower"], {"BIND": "127.0.0.1"})


def test_print_urls_says_where_it_listens(stack_module, capsys):
    stack_module.print_urls(stack_module.Config({"LOCAL_S3": "0"}))
    assert capsys.readouterr().out.splitlines()[0].startswith("the API and Flower listen on 127.0.0.1")

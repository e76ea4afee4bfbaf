"""docker-compose.yml as a user runs it: pinned images, one build, a healthcheck on every service
(each run here against the real process it checks), and the README's compose recipe against it.

No Docker engine runs in the suite. `docker compose config` needs none: where a Compose v2 binary
is on this machine (the `docker compose` plugin, or `docker-compose` v2) the file is also rendered
and validated by it; the rest reads the YAML itself.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml
from celery.utils.nodenames import default_nodename

from tests.services import ROOT, VENV_BIN, Worker, free_port, stop_process, wait_for

APP_SERVICES = ("api", "worker", "control", "flower")  # the services that run Batchery's image


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def depends_on(service: dict) -> dict:
    """A service's `depends_on` in its long form: {service: {"condition": ...}}."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def healthcheck_argv(service: dict) -> list[str]:
    """The command a healthcheck runs, as Docker runs it after Compose's `$$` -> `$` unescaping:
    CMD-SHELL through `sh -c`, CMD as it is."""
    test = service["healthcheck"]["test"]
    kind, *words = test
    words = [word.replace("$$", "$") for word in words]
    if kind == "CMD-SHELL":
        assert len(words) == 1, test
        return ["sh", "-c", words[0]]
    assert kind == "CMD", test
    return words


def run_check(argv: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a healthcheck here: `python` and `celery` are the virtualenv's (in the image they are on PATH)."""
    env = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.environ['PATH'])}"}
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# --- the file --------------------------------------------------------------------------------


def test_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_pulled_images_are_pinned_to_a_release(compose):
    """No `latest` and no floating major (`redis:7`): the same images on every machine, every day."""
    pulled = {name: s["image"] for name, s in compose["services"].items() if name not in APP_SERVICES}
    assert set(pulled) == {"redis", "s3"}
    for image in pulled.values():
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), image
    assert re.fullmatch(r"redis:7\.\d+\.\d+", pulled["redis"])  # exact: major.minor.patch
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", pulled["s3"])


def test_one_build_is_shared_by_the_app_services(compose):
    services = compose["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["api"]
    assert services["api"]["build"] == "."
    image = services["api"]["image"]
    assert image and ":" in image
    for name in ("worker", "control", "flower"):
        service = services[name]
        assert service["image"] == image, name
        assert service["pull_policy"] == "never", name  # nothing to pull: the api service builds it
        assert "api" in depends_on(service), name  # so `docker compose up worker` builds it first
    # the image's other services are only these: nothing else expects it
    assert {name for name, service in services.items() if service.get("image") == image} == set(APP_SERVICES)


def test_depends_on_waits_only_for_what_has_a_healthcheck(compose):
    services = compose["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, spec in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] in conditions, (name, spec)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no check"
    for name in APP_SERVICES:
        assert depends_on(services[name])["redis"]["condition"] == "service_healthy", name
    for name in ("api", "worker"):  # S3 inputs are listed by the API and read by the workers
        assert depends_on(services[name])["s3"]["condition"] == "service_healthy", name


def test_only_the_api_flower_and_s3_are_published(compose):
    """Users deploy over HTTP (POST /apis): Redis, which holds everything, stays inside the stack."""
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"api", "flower", "s3"}
    assert "8080:8080" in compose["services"]["api"]["ports"]


def test_nothing_of_the_users_project_is_mounted(compose):
    """Workers get a deployed project from the job store: the only volumes are the stack's own."""
    for name in APP_SERVICES:
        for volume in compose["services"][name].get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source in compose["volumes"], f"{name} mounts {source} from the host"


# --- each healthcheck against the process it checks -------------------------------------------


def test_the_api_healthcheck_passes_on_a_live_api_and_fails_on_none(compose, live_url):
    argv = healthcheck_argv(compose["services"]["api"])
    port = live_url.rsplit(":", 1)[1]
    assert run_check(argv, {"PORT": port}).returncode == 0
    nobody = str(free_port())
    assert run_check(argv, {"PORT": nobody}).returncode != 0


def test_the_worker_healthcheck_pings_its_own_node(compose, worker_env, tmp_path):
    """Compose's worker is `celery@<container hostname>`, and $HOSTNAME is that hostname."""
    service = compose["services"]["worker"]
    assert "--hostname" not in service["command"][2] and " -n " not in service["command"][2]
    assert default_nodename(None) == f"celery@{socket.gethostname()}"  # what the worker is named, then
    argv = healthcheck_argv(service)
    worker = Worker(worker_env, tmp_path, "celery", concurrency=1)  # node name celery@<this host>
    try:
        here = {**worker_env, "HOSTNAME": socket.gethostname()}
        answered = run_check(argv, here)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        # another host's worker does not answer for this one (a shorter wait: the check's own is 10 s)
        elsewhere = {**worker_env, "HOSTNAME": "not-this-container"}
        assert run_check([*argv[:2], argv[2].replace("--timeout 10", "--timeout 2")], elsewhere).returncode != 0
    finally:
        worker.stop()
    # a worker that is gone fails its check
    assert run_check([*argv[:2], argv[2].replace("--timeout 10", "--timeout 2")], here).returncode != 0


def test_the_flower_healthcheck_answers_without_flowers_login(compose, worker_env, tmp_path):
    service = compose["services"]["flower"]
    port = free_port()
    env = {**worker_env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": service["environment"]["FLOWER_BASIC_AUTH"]}
    command = service["command"][2].removeprefix("exec ").replace("$$", "$")
    log = (tmp_path / "flower.log").open("w")
    flower = subprocess.Popen(
        ["sh", "-c", f"exec {command}"],
        cwd=ROOT,
        env={**env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        argv = healthcheck_argv(service)
        wait_for(lambda: run_check(argv, env).returncode == 0, timeout=90, interval=0.5, what="Flower's healthcheck")
        with pytest.raises(urllib.error.HTTPError) as refused:  # the UI still asks for the login
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert refused.value.code == 401
    finally:
        stop_process(flower, group=True)
        log.close()
    assert run_check(healthcheck_argv(service), env).returncode != 0  # and a Flower that is gone fails it


# --- the README's recipe -----------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n### {title}\n")
    end = re.compile(r"\n##+ ").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def test_the_readme_compose_recipe_matches_the_file(compose):
    recipe = readme_section("With docker compose")
    api = compose["services"]["api"]
    host_port = api["ports"][0].split(":")[0]
    assert "docker compose up --build --wait" in recipe
    assert f"batchery deploy ./myproject --url http://127.0.0.1:{host_port}" in recipe
    assert f"BATCHERY_API_TOKEN={api['environment']['BATCHERY_API_TOKEN']}" in recipe
    assert "batchery delete hello" in recipe
    # the images it lists are the file's
    listed = recipe.split("$ docker compose config --images\n", 1)[1].split("```", 1)[0].split()
    assert sorted(listed) == sorted(service["image"] for service in compose["services"].values())

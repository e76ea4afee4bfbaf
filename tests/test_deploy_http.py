"""Deploying over HTTP (issue 18): `POST /apis` with a project upload, `GET /apis`, `DELETE /apis/<api>`,
Cortex's `predictor.python_path` and `compute`, and `batchery deploy DIR` / `batchery delete <api>`."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from app import create_app
from app.model import status
from app.project_archive import pack, project_id
from app.store import keys
from tests.services import ROOT, wait_for

SMALL_LIMIT = 64 * 1024  # BATCHERY_MAX_PROJECT_BYTES of the app the bad uploads go to

PREDICTOR = """\
import time

from tripler import triple  # lib/tripler.py: found through predictor.python_path only


class PythonPredictor:
    def __init__(self, config):
        self.sleep = config.get("sleep", 0)

    def predict(self, payload):
        time.sleep(self.sleep)
        assert [triple(x) for x in payload] == [3 * x for x in payload]
"""


def cortex_yaml(name: str, extra: str = "") -> str:
    return (
        f"- name: {name}\n  kind: BatchAPI\n  compute: {{cpu: 1, gpu: 1, mem: 2Gi}}\n"
        f"  predictor:\n    type: python\n    path: src/predictor.py\n    python_path: lib\n{extra}"
    )


def project_files(name: str) -> dict[str, bytes]:
    return {
        "cortex.yaml": cortex_yaml(name).encode(),
        "src/predictor.py": PREDICTOR.encode(),
        "lib/tripler.py": b"def triple(x):\n    return 3 * x\n",
        ".cortexignore": b"*.ckpt\nscratch/\n",
        "checkpoint.ckpt": b"left out",
        "scratch/notes.txt": b"left out",
    }


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


def tar_gz(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for relative, content in files.items():
            info = tarfile.TarInfo(relative)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def zipped(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, content in files.items():
            archive.writestr(relative, content)
        for relative, target in (links or {}).items():  # a symlink as zip -y stores it
            info = zipfile.ZipInfo(relative)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def upload(client, body: bytes, content_type: str = "application/gzip", query: str = ""):
    return client.post(f"/apis{query}", data=body, headers={"Content-Type": content_type})


def new_name() -> str:
    return f"up-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def small_app(settings):
    """An API with a 64 KiB project limit, deploying nothing at start."""
    return create_app(
        {"SETTINGS": dataclasses.replace(settings, max_project_bytes=SMALL_LIMIT, watchdog_seconds=0, apis_file="")}
    )


def bad_uploads(name: str) -> dict[str, tuple[bytes, int, str]]:
    """case -> (body, status, a part of the message)."""
    good = project_files(name)
    syntax = dict(good, **{"src/predictor.py": b"class PythonPredictor:\n    def predict(self\n"})
    no_class = dict(good, **{"src/predictor.py": b"class Predictor:\n    pass\n"})
    realtime = dict(good, **{"cortex.yaml": cortex_yaml(name).replace("BatchAPI", "RealtimeAPI").encode()})
    second_bad = dict(
        syntax,
        **{
            "cortex.yaml": (cortex_yaml(name + "-ok").replace("src/predictor.py", "ok.py") + cortex_yaml(name)).encode()
        },
        **{"ok.py": b"class PythonPredictor:\n    pass\n"},
    )
    outside = dict(good, **{"cortex.yaml": cortex_yaml(name).replace("python_path: lib", "python_path: ..").encode()})
    missing_path = dict(
        good, **{"cortex.yaml": cortex_yaml(name).replace("python_path: lib", "python_path: nope").encode()}
    )
    models = dict(good, **{"cortex.yaml": cortex_yaml(name, "    models: {path: s3://b/m}\n").encode()})
    no_yaml = {key: value for key, value in good.items() if key != "cortex.yaml"}
    server_file = str(Path(__file__).resolve().parent / "predictors" / "minimal.py")
    elsewhere = dict(good, **{"cortex.yaml": cortex_yaml(name).replace("src/predictor.py", server_file).encode()})
    return {
        "dotdot": (tar_gz({**good, "../evil.py": b"x"}), 400, "../evil.py: a path with '..'"),
        "absolute": (tar_gz({**good, "/etc/evil.py": b"x"}), 400, "/etc/evil.py: an absolute path"),
        "symlink-out": (tar_gz(good, [link("model.bin", "/etc/passwd")]), 400, "model.bin: a link"),
        "hardlink-out": (tar_gz(good, [link("model.bin", "../../x", hard=True)]), 400, "model.bin: a link"),
        "zip-symlink": (zipped(good, {"model.bin": "/etc/passwd"}), 400, "model.bin: a link"),
        "zip-bomb": (zipped({**good, "zeros.bin": bytes(5 * SMALL_LIMIT)}), 413, "once uncompressed"),
        "too-large": (os.urandom(SMALL_LIMIT + 1), 413, f"BATCHERY_MAX_PROJECT_BYTES ({SMALL_LIMIT} bytes)"),
        "not-an-archive": (b"just some text", 400, "not a readable"),
        "no-cortex-yaml": (tar_gz(no_yaml), 400, "no cortex.yaml"),
        "syntax-error": (tar_gz(syntax), 400, f"API {name}: src/predictor.py line 2: "),
        "missing-class": (tar_gz(no_class), 400, "src/predictor.py must define class PythonPredictor"),
        "not-batch-api": (tar_gz(realtime), 400, "kind 'RealtimeAPI' is not BatchAPI"),
        "second-api-bad": (tar_gz(second_bad), 400, "line 2"),
        "python-path-outside": (tar_gz(outside), 400, "python_path .. lies outside the project"),
        "python-path-missing": (tar_gz(missing_path), 400, "python_path nope is not a folder of the project"),
        "predictor-outside": (tar_gz(elsewhere), 400, "minimal.py lies outside the project folder"),
        "models-key": (tar_gz(models), 400, "predictor.models is not supported by Batchery"),
    }


CASES = list(bad_uploads("x"))


@pytest.mark.parametrize("case", CASES)
def test_a_bad_upload_is_a_4xx_saying_what_and_nothing_is_deployed(small_app, r, case):
    name = new_name()
    body, code, said = bad_uploads(name)[case]
    client = small_app.test_client()
    response = upload(client, body, "application/zip" if case.startswith("zip") else "application/gzip")
    assert response.status_code == code, response.get_json()
    answer = response.get_json()
    assert said in answer["message"], answer
    assert not any(api.startswith(name) for api in small_app.extensions["batchery"].registry.names())
    assert not r.keys(f"{keys.PREFIX}:api:{name}*")


def test_a_multipart_upload_without_file_and_an_unknown_content_type_are_400s(small_app):
    client = small_app.test_client()
    answer = client.post("/apis", data={"other": "x"}, content_type="multipart/form-data")
    assert answer.status_code == 400 and "`file`" in answer.get_json()["message"]
    answer = upload(client, b"{}", "application/json")
    assert answer.status_code == 400 and "application/gzip" in answer.get_json()["message"]


def test_pack_is_reproducible_and_as_the_contract_says(tmp_path):
    folder = write(tmp_path / "p", project_files("packed"))
    (folder / "src" / "__pycache__").mkdir()
    (folder / "src" / "__pycache__" / "x.pyc").write_bytes(b"x")
    first, again = pack(folder), pack(folder)
    assert first.blob == again.blob and first.project_id == project_id(first.blob) and len(first.project_id) == 32
    with tarfile.open(fileobj=io.BytesIO(first.blob), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert (
        names == sorted(names) == [".cortexignore", "cortex.yaml", "lib", "lib/tripler.py", "src", "src/predictor.py"]
    )
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert {m.name: m.mode for m in members}["lib"] == 0o755 and {m.name: m.mode for m in members}[
        "cortex.yaml"
    ] == 0o644
    assert gzip.decompress(first.blob)  # a gzip stream
    (folder / "lib" / "data.txt").write_text("a data file")
    assert pack(folder).project_id != first.project_id


def test_an_upload_deploys_lists_runs_with_python_path_and_undeploys(client, jobs, worker, redis_server):
    name = new_name()
    model = os.urandom(11 * 1024 * 1024)  # over the 10 MiB of a job's body: a project has its own limit
    files = {f"{name}/{path}": content for path, content in {**project_files(name), "model.bin": model}.items()}
    response = upload(client, tar_gz(files))  # in a single top folder, as `tar czf p.tgz myproject` makes it
    assert response.status_code == 200, response.get_json()
    (deployed,) = response.get_json()["apis"]
    assert deployed["name"] == name and deployed["endpoint"].endswith(f"/batch/{name}")
    assert response.get_json()["warnings"] == []
    blob = redis_server.client.get(keys.project(deployed["project_id"]))
    assert project_id(blob) == deployed["project_id"]
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert "model.bin" in tar.getnames() and "checkpoint.ckpt" not in tar.getnames()  # .cortexignore

    listed = {api["name"]: api for api in client.get("/apis").get_json()["apis"]}[name]
    assert listed["api_id"] == deployed["api_id"] and listed["project_id"] == deployed["project_id"]
    assert listed["compute"] == {"cpu": 1, "gpu": 1, "mem": "2Gi"} and listed["python_path"] == "lib"
    assert listed["deployed_at"].endswith("Z")
    assert client.get(f"/batch/{name}").get_json()["spec"]["compute"] == {"cpu": 1, "gpu": 1, "mem": "2Gi"}

    done = jobs.wait_final(
        name, jobs.submit(name, {"workers": 2, "item_list": {"items": [1, 2, 3], "batch_size": 1}})["job_id"]
    )
    assert done["status"] == status.SUCCEEDED, done

    running = jobs.submit(name, {"workers": 1, "config": {"sleep": 15}, "item_list": {"items": [1], "batch_size": 1}})
    busy = client.delete(f"/apis/{name}")
    assert busy.status_code == 409, busy.get_json()
    assert "1 job(s) in progress" in busy.get_json()["message"] and "?force=true" in busy.get_json()["message"]
    forced = client.delete(f"/apis/{name}?force=true")
    assert forced.status_code == 200, forced.get_json()
    assert forced.get_json()["stopped_jobs"] == [running["job_id"]]
    assert client.get(f"/batch/{name}").status_code == 404
    assert client.get(f"/batch/{name}?jobID={running['job_id']}").status_code == 404
    assert client.delete(f"/apis/{name}").status_code == 404
    assert not redis_server.client.exists(keys.project(deployed["project_id"]))  # no API uses it any more
    assert name not in {api["name"] for api in client.get("/apis").get_json()["apis"]}
    assert client.delete(f"/apis/{name}?force=maybe").status_code == 400


@pytest.mark.parametrize("broker", ["sqs"], indirect=True)
def test_python_path_works_on_the_sqs_broker_too(client, jobs, worker):
    name = new_name()
    files = {**project_files(name), "model.bin": os.urandom(11 * 1024 * 1024)}  # over the app's 10 MiB
    response = client.post(
        "/apis", data={"file": (io.BytesIO(zipped(files)), "p.zip")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_json()
    done = jobs.wait_final(
        name, jobs.submit(name, {"workers": 1, "item_list": {"items": [4, 5], "batch_size": 2}})["job_id"]
    )
    assert done["status"] == status.SUCCEEDED, done
    assert client.delete(f"/apis/{name}").status_code == 200


def test_the_cli_deploys_a_folder_over_http_and_deletes_the_api(live_url, worker, tmp_path, jobs):
    name = new_name()
    folder = write(tmp_path / "myproject", project_files(name))
    env = dict(os.environ, BATCHERY_URL=live_url, REDIS_URL="redis://127.0.0.1:1/0")  # no Redis: HTTP only

    def cli(*args: str) -> subprocess.CompletedProcess:
        # from another directory than the project's: nothing is read from its path but the upload
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args], cwd=tmp_path, env=dict(env, PYTHONPATH=str(ROOT)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    (folder / "cortex.yaml").write_text(cortex_yaml(name, "    image: quay.io/cortexlabs/python-predictor-cpu\n"))
    deployed = cli("deploy", str(folder))
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stderr == f"warning: API {name}: predictor.image is not used by Batchery and is ignored\n"
    assert deployed.stdout.startswith(f"deployed {name} (api_id "), deployed.stdout
    done = jobs.wait_final(
        name, jobs.submit(name, {"workers": 1, "item_list": {"items": [7], "batch_size": 1}})["job_id"]
    )
    assert done["status"] == status.SUCCEEDED, done
    as_json = json.loads(cli("deploy", str(folder / "cortex.yaml"), "-o", "json").stdout)
    assert [api["name"] for api in as_json] == [name]

    deleted = cli("delete", name)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"undeployed api {name}"
    again = cli("delete", name)
    assert again.returncode == 1 and again.stderr.startswith(f"error: api {name} is not deployed")
    wait_for(lambda: jobs.client.get(f"/batch/{name}").status_code == 404, timeout=10, what="the API to be gone")


def test_an_api_undeployed_on_purpose_is_not_restored_by_the_process_that_deployed_it_at_start(redis_server, tmp_path):
    """The watchdog deploys BATCHERY_APIS again when Redis lost them, but not after DELETE /apis/<api>."""
    from app.store.registry import Registry, read_deployments

    name = new_name()
    folder = write(tmp_path / "p", project_files(name))
    registry = Registry(redis_server.client)
    deployments = registry.deploy(read_deployments(folder / "cortex.yaml"))
    other = dict(deployments[0].spec, name=name + "-twin")  # the same project, under another name
    registry.redis.hset(keys.api(other["name"]), "spec", json.dumps(other))
    registry.redis.sadd(keys.apis(), other["name"])
    registry.undeploy(name)
    assert registry.redis.exists(keys.project(other["project_id"]))  # still used by the twin
    registry.undeploy(other["name"])
    assert not registry.redis.exists(keys.project(other["project_id"]))
    assert registry.restore_missing(deployments) == [] and name not in registry.names()
    registry.deploy(deployments)  # deploying it again lifts that
    redis_server.client.delete(keys.api(name))  # ...and a Redis that lost it gets it back
    assert registry.restore_missing(deployments) == [name]
    registry.undeploy(name)


def test_an_import_nothing_provides_is_a_warning_in_the_answer_and_python_path_clears_it(small_app, r):
    """Cortex projects that relied on python_path deployed fine, then failed every batch with
    `No module named`: the deploy now names the import, its file and its line."""
    name = new_name()
    files = project_files(name)
    files["src/predictor.py"] = b"import json\nimport redis\nfrom tripler import triple\n" + PREDICTOR.encode()
    without = dict(files, **{"cortex.yaml": cortex_yaml(name).replace("    python_path: lib\n", "").encode()})
    answer = upload(small_app.test_client(), tar_gz(without))
    assert answer.status_code == 200, answer.get_json()
    warned = [text for text in answer.get_json()["warnings"] if "imports tripler" in text]
    assert warned and "src/predictor.py line 3" in warned[0] and "python_path" in warned[0], answer.get_json()
    # json (the standard library), redis (installed here) and tripler under python_path: no warning
    answer = upload(small_app.test_client(), tar_gz(files))
    assert answer.status_code == 200, answer.get_json()
    assert not [text for text in answer.get_json()["warnings"] if " imports " in text], answer.get_json()

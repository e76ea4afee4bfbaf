"""A deployed project reaches every worker: fetched from the job store into a local cache keyed by its
content, unpacked safely once per host, run from there, cleaned when unused (workers/projects.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import redis

from app.model import status
from app.store import keys
from app.store.registry import Registry, read_deployments
from tests.conftest import BOTH_BROKERS
from workers.projects import ProjectCache, ProjectError
from workers.runtime import PredictorCache

# --- a project deployed as the contract says (until the HTTP deploy stores it: app/store) -----------------


def pack(folder: Path, level: int = 9) -> bytes:
    """A project folder as the deploy stores it: a gzip-compressed PAX tar of its files and folders,
    sorted by path, relative to the folder, with mtime 0, uid/gid 0, modes 0o644 / 0o755."""
    members = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir():
            members.append(entry(relative, tarfile.DIRTYPE))
        else:
            members.append(entry(relative, data=path.read_bytes()))
    return blob_of(members, level)


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A tar member: its header and its bytes."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = info.uid = info.gid = 0
    return info, data


def blob_of(members: list[tuple[tarfile.TarInfo, bytes]], level: int = 9) -> bytes:
    """The gzip-compressed tar of `members`, whatever they hold (the tests' hostile blobs too)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=level) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def project_id_of(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:32]


def deploy_fetched(client: redis.Redis, yaml_path: Path) -> dict:
    """Deploy a cortex.yaml's one API as every deploy does: its project packed into the job store
    (the blob at `keys.project(id)`, `project_id` and `project_bytes` in the API's record)."""
    (spec,) = Registry(client).deploy_file(yaml_path)
    blob = client.get(keys.project(spec["project_id"]))
    assert blob is not None and project_id_of(blob) == spec["project_id"]  # the contract's id
    return spec


PREDICTOR = """
import json
import os

import redis

import helpers


class PythonPredictor:
    def __init__(self, config):
        with open("data/values.json") as file:  # relative to the project, as on Cortex
            self.values = json.load(file)
        self.store = redis.Redis.from_url(config["redis_url"])
        self.key = config["key"]

    def predict(self, payload):
        assert self.values["answer"] == helpers.ANSWER == payload[0], (self.values, helpers.ANSWER, payload)
        seen = {"cwd": os.getcwd(), "helpers": helpers.__file__, "model": len(open("model.bin", "rb").read())}
        self.store.set(self.key, json.dumps(seen))
"""


def write_project(folder: Path, name: str) -> Path:
    """A project with a predictor, a sibling module, a data file and a binary model; its cortex.yaml."""
    (folder / "data").mkdir(parents=True)
    (folder / "predictor.py").write_text(PREDICTOR)
    (folder / "helpers.py").write_text("ANSWER = 42\n")
    (folder / "data" / "values.json").write_text('{"answer": 42}')
    (folder / "model.bin").write_bytes(os.urandom(4096))
    yaml = folder / "cortex.yaml"
    yaml.write_text(f"- name: {name}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n")
    return yaml


# --- on real workers ---------------------------------------------------------------------------------------


@BOTH_BROKERS
def test_a_worker_runs_a_project_it_has_no_copy_of_from_its_cache(jobs, worker, redis_server, project_cache, tmp_path):
    """The project is deployed from a folder removed before the batch runs: the worker (whose working
    directory is elsewhere) fetches it, reads its data with a relative path and imports its sibling."""
    name = f"fetched-{uuid.uuid4().hex[:8]}"
    deployed_from = tmp_path / "laptop" / "project"
    store = redis.Redis.from_url(redis_server.url)
    spec = deploy_fetched(store, write_project(deployed_from, name))
    shutil.rmtree(tmp_path / "laptop")
    key = f"fetched:{uuid.uuid4().hex}"
    body = {
        "workers": 1,
        "item_list": {"items": [42], "batch_size": 1},
        "config": {"redis_url": redis_server.url, "key": key},
    }
    job = jobs.wait_final(name, jobs.submit(name, body)["job_id"])
    assert job["status"] == status.SUCCEEDED, job
    seen = json.loads(store.get(key))
    folder = (project_cache / spec["project_id"]).resolve()
    assert Path(seen["cwd"]).resolve() == folder
    assert Path(seen["helpers"]).resolve() == folder / "helpers.py"
    assert seen["model"] == 4096
    assert not deployed_from.exists()


def test_a_project_missing_from_the_job_store_fails_the_job_saying_so(jobs, client, worker, redis_server, tmp_path):
    name = f"fetched-{uuid.uuid4().hex[:8]}"
    store = redis.Redis.from_url(redis_server.url)
    spec = deploy_fetched(store, write_project(tmp_path / "project", name))
    shutil.rmtree(tmp_path / "project")  # deployed from elsewhere: this host has only the job store's copy
    store.delete(keys.project(spec["project_id"]))  # the version was cleaned, or Redis lost it
    body = {
        "workers": 1,
        "item_list": {"items": [42], "batch_size": 1},
        "config": {"redis_url": redis_server.url, "key": "k"},
    }
    job_id = jobs.submit(name, body)["job_id"]
    job = jobs.wait_final(name, job_id)
    assert job["status"] == status.WORKER_ERROR
    assert f"the project {spec['project_id']} of this API is no longer in the job store" in job["message"]
    lines = client.get(f"/batch/{name}/logs?jobID={job_id}").get_json()["lines"]
    assert any("no longer in the job store" in line["message"] for line in lines), lines


# --- the cache on one host ------------------------------------------------------------------------------


def small_project(tmp_path: Path, answer: int = 42) -> bytes:
    folder = tmp_path / f"src-{answer}"
    write_project(folder, "small")
    (folder / "helpers.py").write_text(f"ANSWER = {answer}\n")
    return pack(folder)


def cache_of(root: Path, blob: bytes, keep_seconds: float = 3600) -> ProjectCache:
    return ProjectCache(root, keep_seconds, read=lambda project_id: blob if project_id == project_id_of(blob) else None)


def test_a_project_is_unpacked_whole_under_its_id_and_fetched_once(tmp_path):
    blob = small_project(tmp_path)
    reads = []
    cache = ProjectCache(tmp_path / "cache", 3600, read=lambda project_id: reads.append(project_id) or blob)
    folder = cache.folder(project_id_of(blob))
    assert folder == tmp_path / "cache" / project_id_of(blob)
    assert (folder / "helpers.py").read_text() == "ANSWER = 42\n"
    assert json.loads((folder / "data" / "values.json").read_text()) == {"answer": 42}
    assert cache_of(tmp_path / "cache", b"").folder(project_id_of(blob)) == folder  # another process: no read
    assert cache.folder(project_id_of(blob)) == folder
    assert reads == [project_id_of(blob)]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [folder.name, f"{folder.name}.lock"]


def _unpack_at_once(root: Path, blob: bytes, barrier, results) -> None:
    def read(project_id: str) -> bytes:
        barrier.wait(timeout=60)  # every process has read the blob: they unpack together
        return blob

    try:
        results.put(str(ProjectCache(root, 3600, read).folder(project_id_of(blob))))
    except BaseException as err:  # noqa: BLE001 - the test shows it
        results.put(f"error: {err!r}")


def test_processes_unpacking_the_same_version_at_once_make_one_folder_without_error(tmp_path):
    blob, root, racers = small_project(tmp_path), tmp_path / "cache", 4
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_unpack_at_once, args=(root, blob, barrier, results)) for _ in range(racers)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert answers == [str(root / project_id_of(blob))] * racers
    assert sorted(p.name for p in root.iterdir()) == [project_id_of(blob), f"{project_id_of(blob)}.lock"]
    assert (root / project_id_of(blob) / "helpers.py").read_text() == "ANSWER = 42\n"


HOSTILE = {
    "a path up and out": [entry("../x", data=b"x")],
    "a path climbing out of a folder": [entry("a", tarfile.DIRTYPE), entry("a/../../x", data=b"x")],
    "an absolute path": [entry("/tmp/x", data=b"x")],
    "a symlink": [entry("predictor.py", data=b""), entry("link", tarfile.SYMTYPE, link="/etc/passwd")],
    "a symlink inside": [entry("a.py", data=b""), entry("b.py", tarfile.SYMTYPE, link="a.py")],
    "a hard link": [entry("a.py", data=b""), entry("b.py", tarfile.LNKTYPE, link="a.py")],
    "a device": [entry("dev", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("members", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_blob_with_a_path_out_of_the_project_or_a_link_is_refused_unpacking_nothing(tmp_path, members):
    blob = blob_of([entry("ok.py", data=b"OK = 1\n"), *members])
    root = tmp_path / "cache"
    with pytest.raises(ProjectError, match="the deployed project is refused"):
        cache_of(root, blob).folder(project_id_of(blob))
    assert sorted(p.name for p in root.iterdir()) == [f"{project_id_of(blob)}.lock"]  # no folder, no leftovers
    assert not (tmp_path / "x").exists()


def test_a_blob_that_is_not_its_id_or_not_a_tar_is_refused(tmp_path):
    blob = small_project(tmp_path)
    with pytest.raises(ProjectError, match="does not match its id"):
        ProjectCache(tmp_path / "cache", 3600, read=lambda project_id: blob).folder("0" * 32)
    garbage = b"not a tar at all"
    with pytest.raises(ProjectError, match="not a valid gzip-compressed tar"):
        cache_of(tmp_path / "cache", garbage).folder(project_id_of(garbage))
    with pytest.raises(ProjectError, match="is not a project id"):
        cache_of(tmp_path / "cache", blob).folder("../../etc")


def test_a_project_larger_unpacked_than_the_free_space_is_refused(tmp_path, monkeypatch):
    blob = small_project(tmp_path)
    root = tmp_path / "cache"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ProjectError, match="bytes unpacked, more than the 1000 bytes free"):
        cache_of(root, blob).folder(project_id_of(blob))
    assert not (root / project_id_of(blob)).exists()


def test_a_failed_fetch_holds_nothing_and_its_lock_file_is_cleaned(tmp_path):
    root = tmp_path / "cache"
    cache = ProjectCache(root, 3600, read=lambda project_id: None)
    with pytest.raises(ProjectError, match="no longer in the job store"):
        cache.folder("a" * 32)
    assert cache.held() == set()
    age(root, "a" * 32, 7200)
    cache.clean()
    assert list(root.iterdir()) == []


def age(root: Path, project_id: str, seconds: float) -> None:
    """Make a version's last use `seconds` ago."""
    then = time.time() - seconds
    os.utime(root / f"{project_id}.lock", (then, then))


def test_the_cleanup_removes_an_old_unused_version_and_keeps_one_in_use_or_recent(tmp_path):
    root = tmp_path / "cache"
    old, busy, recent = (small_project(tmp_path, answer) for answer in (1, 2, 3))
    running = cache_of(root, busy)  # a pool process with a predictor of `busy` loaded
    running.folder(project_id_of(busy))
    for blob in (old, recent):
        done = cache_of(root, blob)
        done.folder(project_id_of(blob))
        done.release([])  # its predictor was dropped
    age(root, project_id_of(old), 7200)
    age(root, project_id_of(busy), 7200)  # loaded long ago, still running
    cleaner = ProjectCache(root, 3600, read=lambda project_id: None)  # another process of the host
    assert cleaner.clean() == [project_id_of(old)]
    assert {p.name for p in root.iterdir() if p.is_dir()} == {project_id_of(busy), project_id_of(recent)}
    assert not (root / f"{project_id_of(old)}.lock").exists()
    running.release([])  # its job ended: the version was last used now
    assert cleaner.clean() == []
    age(root, project_id_of(busy), 7200)
    assert cleaner.clean() == [project_id_of(busy)]
    # a version cleaned is fetched again by the next process that needs it
    assert (cache_of(root, old).folder(project_id_of(old)) / "helpers.py").read_text() == "ANSWER = 1\n"


def test_a_predictor_cache_holds_the_version_of_its_predictors_only(tmp_path):
    """The runtime: a predictor loaded from a fetched project runs there, and holds it in use."""
    blob = small_project(tmp_path)
    projects = cache_of(tmp_path / "cache", blob)
    (deployment,) = read_deployments(write_project(tmp_path / "elsewhere", "small"))
    api = {**deployment.spec, "project_id": project_id_of(blob), "project_bytes": len(blob), "api_id": uuid.uuid4().hex}
    shutil.rmtree(tmp_path / "elsewhere")
    predictors = PredictorCache(2, deployed=lambda code_id: deployment.code, projects=projects)
    predictor = predictors.get({"job_id": "j1", "config": {"redis_url": "redis://127.0.0.1:1/0", "key": "k"}}, api)
    assert predictor.modules.folder == tmp_path / "cache" / project_id_of(blob)
    assert predictor.instance.values == {"answer": 42}
    assert projects.held() == {project_id_of(blob)}

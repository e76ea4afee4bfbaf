"""Project fetch benchmark: deploying a project with a 50 MB model, and the first batch's extra
latency on a worker that does not have it yet.

    .venv/bin/python bench/project_fetch.py [--model-mb 50] [--repeat 3] [--quick]

Starts its own redis-server, the API under gunicorn and one Celery worker (prefork, 1 process, so
every job below runs in the same process) with its own empty BATCHERY_PROJECT_CACHE. Each trial
writes a fresh project (a predictor whose `__init__` reads `model.bin`, `--model-mb` MB of random
bytes: it does not compress) and:
- **deploy**: packs it as the deploy stores it (a gzip-compressed tar, tests/test_project_cache.py's
  `pack`, gzip level 9 and level 1) and SETs it in Redis; baseline in the same run: the deploy of
  its Python files alone (Batchery's deploy before projects were stored), and a plain SET of the
  model's bytes (the floor for moving them into Redis).
- **first batch**: a one-batch job of that version, fetched by the worker (the version is new to
  it): from the submission to the final status, and the fetch + unpack time the worker logs.
- **second batch**: another one-batch job of the same version on the same worker (cached).
- **baseline**: the same project deployed the old way (run from its folder on this disk, no
  fetch), a one-batch job of it: a new version loaded with everything but the fetch.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import keys
from app.store.registry import Deployment, Registry, read_deployments
from bench.harness import Stack, machine, median, runs, table, wait_until
from tests.test_project_cache import pack, project_id_of

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        with open("model.bin", "rb") as file:  # the model, read as a real predictor would
            self.model_bytes = len(file.read())

    def predict(self, payload):
        return self.model_bytes
"""
FETCHED = re.compile(r"fetched and unpacked \((\d+) bytes\) in ([0-9.]+)s")


def write_project(folder: Path, name: str, model_mb: int) -> Path:
    """A project: a predictor and a model of random bytes; its cortex.yaml."""
    folder.mkdir(parents=True)
    (folder / "predictor.py").write_text(PREDICTOR)
    with (folder / "model.bin").open("wb") as model:
        for _ in range(model_mb):
            model.write(os.urandom(2**20))
    yaml = folder / "cortex.yaml"
    yaml.write_text(f"- name: {name}\n  kind: BatchAPI\n  predictor:\n    type: python\n    path: predictor.py\n")
    return yaml


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def deploy(stack: Stack, folder: Path, model_mb: int) -> tuple[dict, dict, dict]:
    """Deploy one fresh project twice: fetched by the workers, and from this disk; (timings, both APIs)."""
    name = f"fetch-{uuid.uuid4().hex[:6]}"
    yaml = write_project(folder / name, name, model_mb)
    ((spec, code, _),) = read_deployments(yaml)
    registry = Registry(stack.redis)
    found: dict = {}
    found["pack_9"], blob = timed(lambda: pack(yaml.parent, 9))
    found["pack_1"], _ = timed(lambda: pack(yaml.parent, 1))
    project_id = project_id_of(blob)
    found["store"], _ = timed(lambda: stack.redis.set(keys.project(project_id), blob, nx=True))
    # as deployed over HTTP: from a folder that no worker has (a worker runs a project whose folder
    # it has from that folder, and fetches only what it lacks)
    elsewhere = Path("/deployed-elsewhere") / name
    relative = Path(spec["predictor_file"]).relative_to(spec["project_dir"])
    fetched = {**spec, "project_id": project_id, "project_bytes": len(blob)}
    fetched.update(project_dir=str(elsewhere), predictor_file=str(elsewhere / relative))
    registry.deploy([Deployment(fetched, code)])
    found["bytes"] = len(blob)
    # the baselines: the Python files alone (the deploy before projects were stored), the raw bytes
    on_disk = {**spec, "name": f"{name}-disk", "api_id": f"{spec['api_id']}-disk"}  # a version of its own
    found["code_only"], _ = timed(lambda: registry.deploy([Deployment(on_disk, code)]))
    model = (yaml.parent / "model.bin").read_bytes()
    found["raw_set"], _ = timed(lambda: stack.redis.set(f"bench:raw:{name}", model))
    stack.redis.delete(f"bench:raw:{name}")
    return found, fetched, on_disk


def one_batch(stack: Stack, api_name: str, timeout: float) -> tuple[float, str]:
    """A one-batch job: seconds from its submission to its final status, and its job id."""
    started = time.perf_counter()
    body = {"workers": 1, "item_list": {"items": [1], "batch_size": 1}}
    response = stack.http.post(f"{stack.url}/batch/{api_name}", json=body, timeout=60)
    response.raise_for_status()
    job_id = response.json()["job_id"]

    def final() -> str | None:
        state = stack.http.get(f"{stack.url}/batch/{api_name}", params={"jobID": job_id}, timeout=30).json()
        found = state["job_status"]["status"]
        return found if found not in ("status_enqueuing", "status_running") else None

    found = wait_until(final, timeout, 0.01, f"job {job_id} to end")
    if found != "status_succeeded":
        raise RuntimeError(f"job {job_id} of {api_name} ended {found}")
    return time.perf_counter() - started, job_id


def fetch_seconds(stack: Stack, api_name: str, job_id: str) -> float:
    """The fetch + unpack time the worker logged in the job's log."""
    lines = stack.http.get(f"{stack.url}/batch/{api_name}/logs", params={"jobID": job_id}, timeout=30).json()["lines"]
    for line in lines:
        match = FETCHED.search(line["message"])
        if match:
            return float(match.group(2))
    raise RuntimeError(f"job {job_id}: the worker logged no fetch")


def trial(stack: Stack, args: argparse.Namespace) -> dict:
    found, fetched, on_disk = deploy(stack, stack.workdir / "projects", args.model_mb)
    found["first"], first_job = one_batch(stack, fetched["name"], args.timeout)
    found["fetch"] = fetch_seconds(stack, fetched["name"], first_job)
    found["second"], _ = one_batch(stack, fetched["name"], args.timeout)
    found["disk"], _ = one_batch(stack, on_disk["name"], args.timeout)
    return found


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeat, args.model_mb = 1, min(args.model_mb, 10)
    print(f"machine: {machine()}", flush=True)
    stack = Stack(processes=1, concurrency=1, start_workers=False)
    results = []
    try:
        stack.env["BATCHERY_PROJECT_CACHE"] = str(stack.workdir / "cache")
        stack.start_workers(1, 1)
        for attempt in range(args.repeat):
            print(f"trial {attempt + 1}/{args.repeat} ...", flush=True)
            results.append(trial(stack, args))
            print(f"  {results[-1]}", flush=True)
    finally:
        stack.stop()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: list[dict]) -> None:
    """Print the medians and the ratios."""

    def of(name: str, scale: float = 1000.0, fmt: str = "{:.1f}") -> str:
        return runs([r[name] * scale for r in results], fmt)

    rows = [
        ("machine", machine()),
        ("shape", f"a {args.model_mb} MB model of random bytes, {args.repeat} trials, one worker process"),
        ("blob size, MB", of("bytes", 1e-6, "{:.1f}")),
        ("deploy: pack, gzip level 9, ms", of("pack_9")),
        ("deploy: pack, gzip level 1, ms", of("pack_1")),
        ("deploy: SET the blob in Redis, ms", of("store")),
        ("baseline: deploy the .py files alone (before), ms", of("code_only")),
        ("floor: SET the model's raw bytes, ms", of("raw_set")),
        ("first batch, a version new to the worker: submit -> final, ms", of("first")),
        ("  of which fetch + unpack (the worker's log), ms", of("fetch")),
        ("second batch, same version, same worker: submit -> final, ms", of("second")),
        ("baseline: a new version run from this disk (no fetch), ms", of("disk")),
        (
            "extra latency of the first batch vs the disk baseline, ms",
            runs([1000 * (r["first"] - r["disk"]) for r in results]),
        ),
        (
            "extra latency of the first batch vs the second, ms",
            runs([1000 * (r["first"] - r["second"]) for r in results]),
        ),
    ]
    first, disk = median([r["first"] for r in results]), median([r["disk"] for r in results])
    rows.append(("ratio first batch / disk baseline (medians)", f"{first / disk:.2f}"))
    table("project fetch benchmark", rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-mb", type=int, default=50, help="the model file's size in MB (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="trials (medians are quoted)")
    parser.add_argument("--quick", action="store_true", help="one trial with a 10 MB model")
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))

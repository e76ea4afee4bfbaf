"""Enqueue benchmark: a large NDJSON input on S3 is enqueued with flat memory.

    .venv/bin/python bench/enqueue.py [--size-mb 1024] [--batch-size 100] [--parts 8] [--quick]
                                      [--repeat N] [--profile FILE]

Starts its own redis-server and moto_server on free ports, uploads a generated NDJSON input
(`--parts` objects, rows like {"id": n, "text": "...", "score": 0.5}) streamed from a generator,
then, each in a separate child process so that peak RSS is the process's own:
- the API side: `Submitter.submit` of a `delimited_files` job (validates, lists, stores the job,
  publishes `enqueue_job`), as `POST /batch/<api>` does;
- the enqueuer: `Enqueuer(store, dispatcher).run(job_id, token)`, as the `enqueue_job` task does
  (the `workers` released batches just sit in the broker queue: no worker consumes them);
- the baseline: plain boto3 streaming (`iter_chunks(1 MiB)`) and `json.loads` of every line, the
  I/O + parse ceiling.
Redis `used_memory` is read before and after the enqueuer. A table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
API_NAME = "sum"
WORDS = [
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"),
    *("lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor"),
    *("whiskey", "xray", "yankee", "zulu", "batch", "celery", "redis", "worker", "queue"),
]


def _texts(count: int = 997) -> list[str]:
    """A pool of ~100-byte sentences (deterministic), picked per row without per-row randomness."""
    texts = []
    for n in range(count):
        words, i = [], n
        while sum(len(w) + 1 for w in words) < 100:
            words.append(WORDS[(i * 7 + len(words) * 13) % len(WORDS)])
            i = i * 31 + 17
        texts.append(" ".join(words)[:100])
    return texts


class RowStream:
    """A read-only file of NDJSON rows, generated as it is read (`size` bytes, whole lines)."""

    def __init__(self, size: int, first_id: int):
        self.size, self.next_id, self.produced = size, first_id, 0
        self.texts = _texts()
        self.buffer = b""

    def _fill(self, wanted: int) -> None:
        rows, length, n, texts = [], len(self.buffer), self.next_id, self.texts
        while length < wanted and self.produced + length < self.size:
            row = f'{{"id": {n}, "text": "{texts[n % 997]}", "score": {n % 1000 / 1000}}}\n'
            rows.append(row)
            length += len(row)
            n += 1
        self.next_id = n
        self.buffer += "".join(rows).encode()

    def read(self, size: int = -1) -> bytes:
        wanted = size if size >= 0 else 8 * MiB
        if len(self.buffer) < wanted:
            self._fill(wanted)
        out, self.buffer = self.buffer[:wanted], self.buffer[wanted:]
        self.produced += len(out)
        return out


def upload(bucket: str, total_bytes: int, parts: int) -> tuple[list[str], int]:
    """Upload `parts` generated objects of about total_bytes/parts each; (keys, rows)."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    config = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)
    keys, first_id = [], 0
    for part in range(parts):
        stream = RowStream(total_bytes // parts, first_id)
        key = f"input/part-{part:04d}.ndjson"
        s3.upload_fileobj(stream, bucket, key, Config=config)
        keys.append(key)
        first_id = stream.next_id
    return keys, first_id


# ---- child processes: each prints one JSON line on stdout ----


def rss_now() -> int:
    """Resident set size of this process now, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's peak RSS, bytes: VmHWM, the high-water mark of its own address space.

    Not getrusage's ru_maxrss alone: Linux carries ru_maxrss over fork+exec, so a child started by
    a parent of 90 MiB reports at least 90 MiB. Both are reported; VmHWM is the figure to quote.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return maxrss()


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class RssSampler(threading.Thread):
    """Samples this process's RSS every `interval` s, to show it stays flat along the run."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.samples.append(rss_now())

    def quartiles(self) -> list[int]:
        """The max RSS in each quarter of the run (flat memory: four similar figures)."""
        s = self.samples or [rss_now()]
        n = len(s)
        return [max(s[i * n // 4 : max(i * n // 4 + 1, (i + 1) * n // 4)]) for i in range(4)]


def _services(redis_url: str):
    from app.config import Settings
    from app.jobs.services import Services

    return Services.build(Settings(redis_url=redis_url, apis_file=str(ROOT / "examples" / "cortex.yaml")))


def child_submit(args: argparse.Namespace) -> dict:
    """The API side of an S3 submission (what `POST /batch/<api>` runs)."""
    services = _services(args.redis_url)
    services.registry.deploy_file(ROOT / "examples" / "cortex.yaml")
    body = {
        "workers": args.workers,
        "delimited_files": {"s3_paths": [f"s3://{args.bucket}/input/"], "batch_size": args.batch_size},
    }
    started = time.perf_counter()
    spec = services.submitter.submit(API_NAME, json.dumps(body).encode())
    seconds = time.perf_counter() - started
    return {"job_id": spec["job_id"], "seconds": seconds, "peak_rss": peak_rss(), "maxrss": maxrss()}


def child_enqueue(args: argparse.Namespace) -> dict:
    """The enqueuer, as the `enqueue_job` task runs it."""
    from app.jobs.enqueuer import Enqueuer
    from app.store import keys

    services = _services(args.redis_url)
    services.redis.ping()
    enqueuer = Enqueuer(services.store, services.dispatcher)
    baseline_rss = rss_now()
    sampler = RssSampler()
    sampler.start()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    result = enqueuer.run(args.job_id, token=f"bench:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    seconds = time.perf_counter() - started
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    sampler.stopped.set()
    job = {k.decode(): v.decode() for k, v in services.redis.hgetall(keys.job(args.job_id)).items()}
    cursor = json.loads(job.get("cursor") or "{}")
    return {
        "result": result,
        "status": job.get("status"),
        "message": job.get("message", ""),
        "seconds": seconds,
        "batches": int(job.get("total", 0)),
        "items": cursor.get("item", 0),
        "rss_before": baseline_rss,
        "rss_quarters": sampler.quartiles(),
        "peak_rss": peak_rss(),
        "maxrss": maxrss(),
    }


def child_baseline(args: argparse.Namespace) -> dict:
    """Plain boto3 streaming and json.loads of every line: the I/O + parse ceiling."""
    import boto3

    s3 = boto3.client("s3")
    started = time.perf_counter()
    rows = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix="input/"):
        for obj in page.get("Contents", []):
            pending = b""
            for chunk in s3.get_object(Bucket=args.bucket, Key=obj["Key"])["Body"].iter_chunks(MiB):
                size += len(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        json.loads(line)
                        rows += 1
            if pending.strip():
                json.loads(pending)
                rows += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "bytes": size, "peak_rss": peak_rss(), "maxrss": maxrss()}


CHILDREN = {"submit": child_submit, "enqueue": child_enqueue, "baseline": child_baseline}


def run_child(kind: str, env: dict, **options: object) -> dict:
    argv = [sys.executable, __file__, "--child", kind]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the parent: services, input, runs, table ----


def mb(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def main(args: argparse.Namespace) -> int:
    from tests.services import MotoServer, RedisServer

    size_mb = 64 if args.quick else args.size_mb
    total = size_mb * MiB
    workdir = Path(tempfile.mkdtemp(prefix="batchery-bench-"))
    redis_server = RedisServer(workdir)
    moto = MotoServer(workdir)
    try:
        os.environ.update(moto.env())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        print(f"uploading {size_mb} MiB of NDJSON in {args.parts} objects to moto at {moto.url} ...", flush=True)
        started = time.perf_counter()
        keys, rows = upload(bucket, total, args.parts)
        upload_seconds = time.perf_counter() - started
        print(f"  {len(keys)} objects, {rows:,} rows in {upload_seconds:.1f} s", flush=True)
        r = redis_server.client

        runs, baselines = [], []
        for attempt in range(args.repeat):
            print(f"run {attempt + 1}/{args.repeat}: baseline ...", flush=True)
            baselines.append(run_child("baseline", env, bucket=bucket))
            print(f"  {baselines[-1]['bytes'] / MiB / baselines[-1]['seconds']:.1f} MB/s", flush=True)
            submitted = run_child(
                "submit",
                env,
                redis_url=redis_server.url,
                bucket=bucket,
                workers=args.workers,
                batch_size=args.batch_size,
            )
            before = r.info("memory")["used_memory"]
            print(f"run {attempt + 1}/{args.repeat}: enqueue job {submitted['job_id']} ...", flush=True)
            options = {"redis_url": redis_server.url, "job_id": submitted["job_id"]}
            if args.profile and attempt == 0:
                options["profile"] = args.profile
            enqueued = run_child("enqueue", env, **options)
            after = r.info("memory")["used_memory"]
            backlog = f"batchery:job:{submitted['job_id']}:backlog"
            enqueued.update(
                submit=submitted,
                redis_before=before,
                redis_after=after,
                backlog_len=r.llen(backlog),
                backlog_usage=r.memory_usage(backlog, samples=0) or 0,
                broker_queue=r.llen("batchery"),
            )
            if enqueued["status"] not in ("status_running", "status_enqueuing") or enqueued["result"] != "done":
                raise RuntimeError(f"enqueuing did not finish: {enqueued}")
            if enqueued["items"] != rows or baselines[-1]["rows"] != rows:
                raise RuntimeError(f"item count mismatch: uploaded {rows}, {enqueued['items']}, {baselines[-1]}")
            print(f"  {total / MiB / enqueued['seconds']:.1f} MB/s, {enqueued['batches']:,} batches", flush=True)
            runs.append(enqueued)
        report(args, size_mb, total, rows, runs, baselines)
    finally:
        moto.stop()
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(args, size_mb: int, total: int, rows: int, runs: list[dict], baselines: list[dict]) -> None:
    enq_rates = [total / MiB / run["seconds"] for run in runs]
    base_rates = [b["bytes"] / MiB / b["seconds"] for b in baselines]
    enq_all = f"{statistics.median(enq_rates):.1f}; " + ", ".join(f"{x:.1f}" for x in enq_rates)
    base_all = f"{statistics.median(base_rates):.1f}; " + ", ".join(f"{x:.1f}" for x in base_rates)
    last = runs[-1]
    growth = last["redis_after"] - last["redis_before"]
    rows_out = [
        ("input", f"{size_mb} MiB, {args.parts} objects, {rows:,} rows, batch_size {args.batch_size}"),
        ("runs", str(len(runs))),
        ("enqueue MB/s (median; all)", enq_all),
        ("enqueue wall time (median)", f"{statistics.median(r['seconds'] for r in runs):.1f} s"),
        ("batches", f"{last['batches']:,}"),
        ("enqueuer RSS before run", mb(last["rss_before"])),
        ("enqueuer RSS by quarter of run (max)", ", ".join(mb(x) for x in last["rss_quarters"])),
        ("enqueuer peak RSS (VmHWM, max of runs)", mb(max(r["peak_rss"] for r in runs))),
        ("enqueuer ru_maxrss (inherits the parent's)", mb(max(r["maxrss"] for r in runs))),
        ("API submit peak RSS (VmHWM)", mb(max(r["submit"]["peak_rss"] for r in runs))),
        ("API submit time (median)", f"{statistics.median(r['submit']['seconds'] for r in runs):.2f} s"),
        ("Redis used_memory before -> after", f"{mb(last['redis_before'])} -> {mb(last['redis_after'])}"),
        ("Redis growth (total; per batch)", f"{mb(growth)}; {growth / max(1, last['batches']):.0f} B"),
        (
            "backlog list (entries; MEMORY USAGE)",
            f"{last['backlog_len']:,}; {mb(last['backlog_usage'])}"
            f" ({last['backlog_usage'] / max(1, last['backlog_len']):.0f} B/entry)",
        ),
        ("broker queue messages (released batches)", str(last["broker_queue"])),
        ("baseline boto3+json.loads MB/s (median; all)", base_all),
        ("baseline peak RSS (VmHWM)", mb(max(b["peak_rss"] for b in baselines))),
        ("ratio enqueue / baseline (medians)", f"{statistics.median(enq_rates) / statistics.median(base_rates):.2f}"),
    ]
    width = max(len(name) for name, _ in rows_out)
    print()
    print("-" * (width + 50))
    for name, value in rows_out:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 50))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--parts", type=int, default=8, help="number of S3 objects (default 8)")
    parser.add_argument("--workers", type=int, default=10, help="the job's workers (batches released at once)")
    parser.add_argument("--quick", action="store_true", help="~64 MiB input, for CI-sized runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs over the same uploaded input")
    parser.add_argument("--profile", default="", help="cProfile the (first) enqueuer run into this file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--job-id", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.child:
        print(json.dumps(CHILDREN[arguments.child](arguments)))
        sys.exit(0)
    sys.exit(main(arguments))

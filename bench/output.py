"""Output benchmark: a job's predictions written to S3, against the same job without output.

    .venv/bin/python bench/output.py [--size-mb 1024] [--batch-size 1000] [--parts N] [--quick]
                                     [--repeat N] [--workers 4]

Starts its own redis-server, moto_server, the API (gunicorn) and one Celery worker (prefork,
concurrency 2) on free ports, uploads a generated NDJSON input as bench/enqueue.py does (rows
like {"id": n, "text": "<100 bytes>", "score": 0.5}; in objects of 8 MiB unless `--parts` says
otherwise), then runs, in each round, two
`delimited_files` jobs of the `noop` API with `echo` on (predict returns its payload):
- **baseline**: without `output`: predict's return value is ignored, as on Cortex;
- **output**: with `output: {"s3_path": "s3://<bucket>/out/"}`: every batch's predictions
  written as NDJSON to `out/<job_id>/<batch_id>.ndjson`, one line per item.
Each job is timed from its submission to its final status (the workers' read of the input, the
predictor, and for the second the write of its output). The output files are listed after the
job and their sizes summed; the bench checks there is one file per batch and as many lines as
input rows (on the first round). A table is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1 << 20


def run_job(stack, body: dict, timeout: float) -> tuple[dict, float]:
    """Submit a job and wait for its final status; (status, seconds from submission to its end)."""
    from app.model import status

    started = time.perf_counter()
    spec = stack.submit(body)
    deadline = started + timeout
    while True:
        job = stack.status(spec["job_id"])
        if status.is_final(job["status"]):
            return job, time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise RuntimeError(f"job {spec['job_id']} did not end in {timeout:.0f} s: {job}")
        time.sleep(0.2)


def output_files(bucket: str, job_id: str) -> tuple[int, int]:
    """(files, bytes) under the job's output prefix."""
    import boto3

    files = size = 0
    for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"out/{job_id}/"):
        for item in page.get("Contents", []):
            files += 1
            size += item["Size"]
    return files, size


def output_lines(bucket: str, job_id: str) -> int:
    """The lines of every output file of the job (read back: the bench's check, not timed)."""
    import boto3

    s3 = boto3.client("s3")
    lines = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"out/{job_id}/"):
        for item in page.get("Contents", []):
            lines += s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().count(b"\n")
    return lines


def main(args: argparse.Namespace) -> int:
    from bench.enqueue import upload
    from bench.harness import Stack, machine
    from tests.services import MotoServer

    size_mb = 64 if args.quick else args.size_mb
    args.parts = args.parts or max(1, size_mb // 8)
    moto_dir = Path(tempfile.mkdtemp(prefix="batchery-bench-moto-"))
    moto = MotoServer(moto_dir)
    stack = None
    try:
        os.environ.update(moto.env())
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        print(f"uploading {size_mb} MiB of NDJSON in {args.parts} objects to moto at {moto.url} ...", flush=True)
        keys, rows = upload(bucket, size_mb * MiB, args.parts)
        total = size_mb * MiB
        print(f"  {len(keys)} objects, {rows:,} rows", flush=True)
        stack = Stack(processes=1, concurrency=2, worker_env=moto.env())
        source = {"s3_paths": [f"s3://{bucket}/input/"], "batch_size": args.batch_size}
        base = {"workers": args.workers, "delimited_files": source, "config": {"echo": True}}
        timeout = max(600.0, size_mb * 2.0)
        baselines, outputs = [], []
        for attempt in range(args.repeat):
            job, seconds = run_job(stack, base, timeout)
            baselines.append({"seconds": seconds, "batches": job["total_batch_count"], "status": job["status"]})
            print(f"run {attempt + 1}/{args.repeat}: without output {total / MiB / seconds:.1f} MB/s", flush=True)
            job, seconds = run_job(stack, dict(base, output={"s3_path": f"s3://{bucket}/out/"}), timeout)
            files, size = output_files(bucket, job["job_id"])
            run = {"seconds": seconds, "batches": job["total_batch_count"], "files": files, "bytes": size}
            if attempt == 0:
                run["lines"] = output_lines(bucket, job["job_id"])
            outputs.append(dict(run, status=job["status"]))
            print(f"run {attempt + 1}/{args.repeat}: with output {total / MiB / seconds:.1f} MB/s", flush=True)
        check(rows, baselines, outputs)
        report(args, size_mb, total, rows, baselines, outputs, machine())
    finally:
        if stack is not None:
            stack.stop()
        moto.stop()
        shutil.rmtree(moto_dir, ignore_errors=True)
    return 0


def check(rows: int, baselines: list[dict], outputs: list[dict]) -> None:
    """Every job succeeded, with one output file per batch and one line per input row."""
    for run in baselines + outputs:
        if run["status"] != "status_succeeded":
            raise RuntimeError(f"a job did not succeed: {run}")
    for run in outputs:
        if run["files"] != run["batches"]:
            raise RuntimeError(f"{run['files']} output files for {run['batches']} batches")
    if outputs[0]["lines"] != rows:
        raise RuntimeError(f"{outputs[0]['lines']:,} output lines for {rows:,} input rows")


def report(args, size_mb: int, total: int, rows: int, baselines: list, outputs: list, where: str) -> None:
    def rates(runs: list[dict]) -> list[float]:
        return [total / MiB / run["seconds"] for run in runs]

    def figures(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}; " + ", ".join(f"{v:.1f}" for v in values)

    out_rates, base_rates = rates(outputs), rates(baselines)
    written = [run["bytes"] / MiB / run["seconds"] for run in outputs]
    ratio = statistics.median(out_rates) / statistics.median(base_rates)
    lines = [
        ("machine", where),
        ("input", f"{size_mb} MiB, {args.parts} objects, {rows:,} rows, batch_size {args.batch_size}"),
        ("job", f"delimited_files, workers {args.workers}; one worker, prefork, concurrency 2"),
        ("runs", str(len(outputs))),
        ("batches (files written per job)", f"{outputs[-1]['batches']:,}"),
        ("output per job", f"{outputs[-1]['bytes'] / MiB:,.1f} MiB"),
        ("without output: input MB/s (median; all)", figures(base_rates)),
        ("with output: input MB/s (median; all)", figures(out_rates)),
        ("with output: output MB/s written (median; all)", figures(written)),
        ("job time without / with output (medians)", f"{median_of(baselines):.1f} s / {median_of(outputs):.1f} s"),
        ("ratio with / without output (medians)", f"{ratio:.2f}"),
    ]
    width = max(len(name) for name, _ in lines)
    print()
    print("-" * (width + 60))
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 60))


def median_of(runs: list[dict]) -> float:
    """The median of the runs' seconds."""
    return statistics.median(run["seconds"] for run in runs)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batch (~143 KB: under 256 KiB)")
    # Each batch is a ranged GET of its object; moto's cost per ranged GET grows with the object's
    # size (10 batches/s from 128 MiB objects, ~50 from 8 MiB ones): 8 MiB objects, as --quick's.
    parser.add_argument("--parts", type=int, default=0, help="number of S3 objects (default: 8 MiB each)")
    parser.add_argument("--workers", type=int, default=4, help="the jobs' workers")
    parser.add_argument("--quick", action="store_true", help="~64 MiB input, for CI-sized runs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (each: one job without output, one with)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args(sys.argv[1:])))

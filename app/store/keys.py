"""Every Redis key Batchery uses, in one place (the python-rq / arq habit)."""

PREFIX = "batchery"


def api(name: str) -> str:
    """Hash: a deployed API's spec (JSON) and id."""
    return f"{PREFIX}:api:{name}"


def code(code_id: str) -> str:
    """Hash: the Python files of a deployed project, by path in its folder (app/store/code.py); one per
    distinct code, whichever APIs and versions run it."""
    return f"{PREFIX}:code:{code_id}"


def project(project_id: str) -> str:
    """String: a deployed project as a gzip-compressed tar (app/project_archive.py), named by the
    SHA-256 of its bytes; one per distinct content, written with SET NX."""
    return f"{PREFIX}:project:{project_id}"


def code_keys(api: dict) -> list[str]:
    """The keys of the code an API spec runs: its Python files (`code`) and its packed project (`project`)."""
    found = [code(api["code_id"])] if api.get("code_id") else []
    return found + ([project(api["project_id"])] if api.get("project_id") else [])


def undeployed() -> str:
    """Set: names of the APIs undeployed on purpose (DELETE /apis/<name>), which the API processes
    that deployed them at start do not deploy again; a deploy of the name removes it."""
    return f"{PREFIX}:apis:undeployed"


def apis() -> str:
    """Set: names of the deployed APIs."""
    return f"{PREFIX}:apis"


def api_jobs(name: str) -> str:
    """Sorted set: an API's job ids, scored by creation time."""
    return f"{PREFIX}:api:{name}:jobs"


def api_active(name: str) -> str:
    """Sorted set: an API's jobs not yet in a final status, scored by creation time."""
    return f"{PREFIX}:api:{name}:active"


def job(job_id: str) -> str:
    """Hash: a job's spec, status, counters and times."""
    return f"{PREFIX}:job:{job_id}"


def backlog(job_id: str) -> str:
    """List: batches not yet released to the broker (JSON entries)."""
    return f"{PREFIX}:job:{job_id}:backlog"


def inflight(job_id: str) -> str:
    """Hash: batch id -> entry, for batches released and not finished (at most `workers`)."""
    return f"{PREFIX}:job:{job_id}:inflight"


def ended_inflight(job_id: str) -> str:
    """Set: the ids of the batches in flight when the job ended; a late outcome of one counts once."""
    return f"{PREFIX}:job:{job_id}:ended_inflight"


def deliveries(job_id: str) -> str:
    """Hash: `<batch>` -> deliveries started, `<batch>:r` -> deliveries whose outcome was recorded,
    `<batch>:g` -> times the watchdog published it again, `<batch>:oom` -> deliveries killed for memory,
    `<batch>:h` -> held: delivered while the job was paused, to publish again on resume,
    `<batch>:o` -> the process that began its latest delivery (its owner while that runs)."""
    return f"{PREFIX}:job:{job_id}:deliveries"


def released(job_id: str) -> str:
    """Sorted set: batch id -> when it was released (or published again) and no delivery began yet
    (+inf once one did); removed when the batch ends."""
    return f"{PREFIX}:job:{job_id}:released"


def unpublished(job_id: str) -> str:
    """Sorted set: batch id -> when it was released (or published again) for the releasing process
    to publish; removed once that process says it published the message. One left here long after
    was lost with its publisher, which died between the release and the publish."""
    return f"{PREFIX}:job:{job_id}:unpublished"


def procs(job_id: str) -> str:
    """Hash: worker process id -> `initializing <batch_id>` or `running <batch_id>` while it works on the job."""
    return f"{PREFIX}:job:{job_id}:procs"


def proc_alive(proc: str) -> str:
    """String with a TTL: a pool process (as named in `procs`) is alive while it exists; its
    worker's main process renews it, and the process itself from a thread (workers/liveness.py)."""
    return f"{PREFIX}:proc:{proc}:alive"


def worker_children(worker: str) -> str:
    """String with a TTL: the pids of a worker's live pool processes, space-separated, written by
    the worker's main process (`worker`: `<host>:<token>`, as `app.model.wire.worker_of` reads a
    process name); a process it lists is alive even if its own key was lost (workers/liveness.py)."""
    return f"{PREFIX}:worker:{worker}:children"


def job_log(job_id: str) -> str:
    """List: the job's last log lines (JSON), oldest first."""
    return f"{PREFIX}:job:{job_id}:log"


def job_log_seq(job_id: str) -> str:
    """Counter: the number of the job's last log line."""
    return f"{PREFIX}:job:{job_id}:log:seq"


def job_output(job_id: str) -> str:
    """Hash: batch id -> the NDJSON lines of its predictions, for a job with `output: {store: redis}`
    (app/jobs/output.py); kept as long as the job."""
    return f"{PREFIX}:job:{job_id}:output"


def job_output_bytes(job_id: str) -> str:
    """Counter: the bytes in the job's output hash, checked against BATCHERY_OUTPUT_STORE_BYTES."""
    return f"{PREFIX}:job:{job_id}:output:bytes"


def enqueuer(job_id: str) -> str:
    """String with a TTL: the lease of the process enqueuing the job (renewed with each chunk)."""
    return f"{PREFIX}:job:{job_id}:enqueuer"


def dead_letters(queue_name: str) -> str:
    """List: the dead-letter queue named by a job's `sqs_dead_letter_queue.arn` (Redis broker)."""
    return f"{PREFIX}:dlq:{queue_name}"


def watchdog_lock(queue_url: str) -> str:
    """String with a TTL: held by the API process of the fleet on `queue_url` (a job's queue, as
    in `app.model.job.queue_of`) running that fleet's current watchdog sweep."""
    return f"{PREFIX}:watchdog:{queue_url}"


def api_statuses(name: str) -> str:
    """Hash: status -> how many of an API's jobs are in it now (moved by each status change)."""
    return f"{PREFIX}:api:{name}:statuses"


def idempotency(api_name: str, key_digest: str) -> str:
    """String with a TTL: what an `Idempotency-Key` (by its SHA-256) of an API stands for: the body's
    hash, and the job spec it created (or a marker while the first request creates it)."""
    return f"{PREFIX}:idempotency:{api_name}:{key_digest}"


def webhook_outbox() -> str:
    """Sorted set: job id -> when its completion webhook is next due (set by the call that ends the
    job: `end_job` in app/store/lua/common.lua); removed once delivered or given up."""
    return f"{PREFIX}:webhooks:due"


def webhook_lock(job_id: str) -> str:
    """String with a TTL: held by the API process delivering a job's webhook right now."""
    return f"{PREFIX}:job:{job_id}:webhook:lock"


def webhook_body(job_id: str) -> str:
    """String: the body of a job's completion webhook, fixed at its first attempt (every attempt
    sends the same event)."""
    return f"{PREFIX}:job:{job_id}:webhook:body"


def failed_batches(job_id: str) -> str:
    """Sorted set: the backlog entries of the job's batches that failed for good, scored by batch
    number; kept with the job, for a retry of them (app/jobs/retry.py). The store's Lua names it
    as the job's key and `:failed` (record.lua)."""
    return f"{job(job_id)}:failed"


def unfinished_backlog(job_id: str) -> str:
    """List: the backlog as it was when the job ended (the batches never released), kept for a
    retry of the unfinished batches; the Lua names it as the job's key and `:unfinished:backlog`."""
    return f"{job(job_id)}:unfinished:backlog"


def unfinished_inflight(job_id: str) -> str:
    """Hash: batch id -> entry of the batches in flight when the job ended and that never reported
    an outcome since; the Lua names it as the job's key and `:unfinished:inflight`."""
    return f"{job(job_id)}:unfinished:inflight"


def throughput(job_id: str) -> str:
    """Hash: `<epoch second of a 10-s bucket's start>` -> batches of the job that ended in it; written by
    RECORD (record.lua names it as the job's key and `:throughput`), kept with the job."""
    return f"{job(job_id)}:throughput"


def batch_errors(job_id: str) -> str:
    """Hash: batch id -> `{"attempts", "error"}` (JSON) of the job's first batches that failed for good
    (app/store/batch_errors.py), at most BATCH_ERRORS_KEPT of them."""
    return f"{job(job_id)}:batch_errors"


def queue_processes(queue: str) -> str:
    """Hash: worker node -> `<expires> <processes>`: the pool processes each live worker serves
    `queue` with (workers/pools.py renews its entry; app/store/pools.py counts the live ones)."""
    return f"{PREFIX}:queue:{queue}:processes"


def queues() -> str:
    """Set: every queue a worker served or a job ran on (the queues /metrics reports)."""
    return f"{PREFIX}:queues"


def watchdog_home(queue_url: str) -> str:
    """String with a TTL: the queue's own fleet (API processes whose BATCHERY_QUEUE it is) is
    sweeping it; renewed by each of them every sweep period. Queues without one (dedicated pools'
    queues) are swept, in turn, by any fleet's processes on the same broker."""
    return f"{PREFIX}:watchdog-home:{queue_url}"


def job_keys(job_id: str) -> list[str]:
    """Every key of one job, all named after its hash (`job(job_id)` and a suffix): an ended job's keys
    expire together after BATCHERY_JOB_RETENTION_SECONDS (app/store/retention.py). A key family of a
    job added here or above must be in this list (tests/test_retention.py checks it)."""
    return [
        job(job_id),
        backlog(job_id),
        inflight(job_id),
        ended_inflight(job_id),
        deliveries(job_id),
        released(job_id),
        unpublished(job_id),
        procs(job_id),
        job_log(job_id),
        job_log_seq(job_id),
        job_output(job_id),
        job_output_bytes(job_id),
        enqueuer(job_id),
        webhook_lock(job_id),
        webhook_body(job_id),
        failed_batches(job_id),
        unfinished_backlog(job_id),
        unfinished_inflight(job_id),
        throughput(job_id),
        batch_errors(job_id),
    ]


def retention_ended() -> str:
    """Sorted set: a note on each ended job (JSON: id, API, final status, code references, its
    Idempotency-Key record, dead-letter list), scored by when its keys expire; the retention sweep
    takes the job out of the listings then (app/store/retention.py)."""
    return f"{PREFIX}:retention:ended"


def retention_expired() -> str:
    """Sorted set: job id -> when it expired, for a while after (a tombstone), so that its id answers
    404 saying it expired rather than that it never existed."""
    return f"{PREFIX}:retention:expired"


def code_refs() -> str:
    """Hash: a stored code key (`code(...)`, `project(...)`) -> how many kept jobs (in progress, or
    ended and not yet expired) run it."""
    return f"{PREFIX}:retention:code_refs"


def code_stored() -> str:
    """Sorted set: a stored code key (`code(...)`, `project(...)`) -> the last time it was seen
    deployed; one no deployed API nor kept job uses is removed by the retention sweep."""
    return f"{PREFIX}:retention:code_stored"


def replication_fence() -> str:
    """String: a counter a process increments just before `WAIT` on a Sentinel-backed store
    (app/store/connection.py `replicated`), so that its connection has a write to wait for."""
    return f"{PREFIX}:replication_fence"

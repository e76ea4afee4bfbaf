"""The Celery app the workers run (`celery -A workers worker`), after Flask's `celery_init_app`."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys

import billiard.process
from celery import signals
from kombu import Exchange, Queue

from app.broker.config import consumed_queues, is_sqs, make_celery
from app.config import Settings
from app.store import joblog
from app.store.connection import store_client
from app.store.joblog import JobLog, configure_process_logging
from workers import oom, pools, revoke, stdio
from workers.kombu_patches import kept_client, redis_restore, sqs_receive, sqs_restore

settings = Settings.from_env()
celery = make_celery(settings, include=["workers.tasks"])
# The queues this worker consumes, by BATCHERY_QUEUES and BATCHERY_LANE (no -Q on the command line:
# a worker consumes every queue of `task_queues`), declared as Celery declares a missing one.
celery.conf.task_queues = [Queue(name, Exchange(name), routing_key=name) for name in consumed_queues(settings)]
served = pools.Served(settings)
signals.worker_ready.connect(served.on_worker_ready)
signals.worker_shutdown.connect(served.on_worker_shutdown)
if is_sqs(settings):
    sqs_restore.install()
    sqs_receive.install()
else:
    redis_restore.install()
    kept_client.install()
oom.use_job_store(settings)
revoke.use(settings, celery)  # a revoked batch task is a failed attempt, said in the job's log (workers/revoke.py)
signals.worker_ready.connect(oom.on_worker_ready)  # the main process: where lost pool processes are seen


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int | None = None, **kwargs: object) -> None:
    """Batchery's logging instead of Celery's: JSON lines, and per-job logs in Redis."""
    # timeouts: a task writes its log lines at its end, and must not hang there on a hung Redis
    timeout = joblog.FLUSH_SECONDS
    client = store_client(settings.redis_url, settings, socket_timeout=timeout, socket_connect_timeout=timeout)
    job_log = JobLog(client, settings.job_log_lines)
    stream, log_format = stdio.unwrapped(sys.stderr), settings.log_format
    configure_process_logging(job_log, loglevel or "INFO", background=True, stream=stream, log_format=log_format)
    stdio.redirect()  # print() becomes log lines too (Celery's own redirection is off with its logging)
    joblog.adopt_task_threads()
    # Celery's INFO lines per task ("Task ... received", "... succeeded in ...", "... retry: ...")
    # say again what Batchery's own lines say with the batch id, and cost a JSON line per batch in
    # each process; warnings and errors from them (a task that raised) still show.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_process_init.connect
def _let_predictors_start_processes(**kwargs: object) -> None:
    """A pool process may start processes of its own: a predictor's multiprocessing Pool, a torch
    DataLoader's workers, joblib. Billiard makes pool processes daemonic, and multiprocessing
    refuses children to a daemonic process ("daemonic processes are not allowed to have
    children"); Cortex ran predictors in an ordinary process. The flag is not public: `_config` is
    where both libraries keep it."""
    for process in (multiprocessing.current_process(), billiard.process.current_process()):
        process._config["daemon"] = False  # type: ignore[union-attr]  # private: typeshed does not declare it
    # Billiard's process object stands for multiprocessing's too, its key of billiard's type, which
    # multiprocessing's spawn refuses to pickle: the key as multiprocessing's own
    process = multiprocessing.current_process()
    authkey = multiprocessing.process.AuthenticationString(bytes(process.authkey))  # type: ignore[attr-defined]
    process._config["authkey"] = authkey  # type: ignore[attr-defined]  # private, as above
    os.register_at_fork(after_in_child=_default_sigterm)


def _default_sigterm() -> None:
    # A child forked outside a predictor call (from a thread it started) gets SIGTERM's default
    # back as early as Python lets it (workers/runtime.py `_calling` covers forks during calls).
    with contextlib.suppress(ValueError):  # forked from another thread than the main one: none to reset
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

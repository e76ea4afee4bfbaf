"""`batchery`: the command line of Batchery, with the verbs of Cortex's CLI.

    batchery deploy [DIR|cortex.yaml]    deploy a project's BatchAPIs over HTTP (--redis: into the job store)
    batchery get                         the APIs: jobs in progress, latest job
    batchery get <api>                   the API's jobs
    batchery get <api> <job> [--watch]   a job's status (--watch: a live progress bar until it ends)
    batchery submit <api> job.json       submit a job, print its id
    batchery delete <api> <job>          stop a job
    batchery delete <api> [--force]      undeploy an API
    batchery pause <api> <job>           pause a job (nothing of it starts); resume: go on

Everything but `deploy --redis` goes through the HTTP API (app.client); `-o json` prints the API's JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from app.client import BatcheryAPIError, BatcheryConnectionError, Client
from app.config import client_env
from app.model import status

OUTPUTS = ("table", "json")
# The shortest time between two polls of the API (`get --watch`, `logs --follow`): each is a
# request, and 0 or a negative value made the CLI poll as fast as it could.
MIN_INTERVAL = 0.1


def default_url() -> str:
    """BATCHERY_URL, else the API that `make up` starts (port PORT, default 8080)."""
    return client_env().url


def console(stderr: bool = False) -> Console:
    """A console for tables and progress; a wide one when output is piped."""
    # Piped output gets a wide console, so that tables are not folded at 80 columns.
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Print one line `error: <message>` on stderr and exit 1."""
    click.echo("error: " + " ".join(str(message).split()), err=True)
    sys.exit(1)


class Context:
    """The global options, which each command also accepts after its name (`batchery get -o json`)."""

    def __init__(self, url: str, output: str, token: str | None = None):
        self.url = url
        self.output = output
        self.token = token

    def client(self) -> Client:
        """An HTTP client for this context's API server and token."""
        return Client(self.url, token=self.token)

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the API; its errors become one line on stderr and exit code 1."""
        try:
            return method(*args, **kwargs)
        except BatcheryAPIError as err:
            if err.status == 401:
                fail(f"{err.message} (set BATCHERY_API_TOKEN or pass --token)")
            fail(err.message)
        except BatcheryConnectionError as err:
            fail(f"{err} (start the stack with `make up`, or point --url / BATCHERY_URL at the API)")


def _remember_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["batchery_token"] = value


def options(command: Callable) -> Callable:
    """--url, -o and --token on a command too; given there, they win over the group's."""
    command = click.option(
        "--token",
        default=None,
        expose_value=False,
        callback=_remember_token,
        help="the API's token (default: $BATCHERY_API_TOKEN)",
    )(command)
    command = click.option("--url", default=None, help="the Batchery API (default: $BATCHERY_URL)")(command)
    command = click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None, help="table or json")(command)
    return command


def context(url: str | None, output: str | None) -> Context:
    """The command's context: its own --url/--output, else the group's."""
    parent = click.get_current_context().find_object(Context)
    if parent is None:  # a command invoked on its own, without the `batchery` group: the defaults
        parent = Context(default_url(), OUTPUTS[0])
    token = click.get_current_context().meta.get("batchery_token")
    return Context(url or parent.url, output or parent.output, token or parent.token)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    default=default_url,
    show_default="$BATCHERY_URL, else http://127.0.0.1:$PORT (8080)",
    help="the Batchery API",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(OUTPUTS),
    default="table",
    show_default=True,
    help="table for people, json (the API's answer) for scripts",
)
@click.option(
    "--token",
    default=None,
    # not click's envvar: the client reads BATCHERY_API_TOKEN itself (app.config.client_env), one rule for both
    show_default="$BATCHERY_API_TOKEN",
    help="the API's bearer token, when the API sets BATCHERY_API_TOKEN",
)
@click.pass_context
def main(ctx: click.Context, url: str, output: str, token: str | None) -> None:
    """Batchery: batch jobs over a Celery fleet, with the Cortex Batch API."""
    ctx.obj = Context(url, output, token or None)


# --- deploy ----------------------------------------------------------------------------------


@main.command()
@click.argument("project", default=".", type=click.Path(exists=True), metavar="[DIR|cortex.yaml]")
@click.option(
    "--redis",
    "--redis-url",
    "redis_url",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[URL]",
    help="write into the job store at URL directly instead (the local stack only; alone: $REDIS_URL, else "
    "redis://127.0.0.1:$REDIS_PORT/0)",
)
@options
def deploy(project: str, redis_url: str | None, url: str | None, output: str | None) -> None:
    """Deploy the BatchAPIs of a project (DIR, or the folder of its cortex.yaml) over HTTP.

    The folder is packed (`.cortexignore` honoured) and uploaded to the API at --url / $BATCHERY_URL,
    with the token: the workers fetch it from the job store, so no path needs to exist on them.
    """
    ctx = context(url, output)
    if redis_url is not None:
        specs = _deploy_into_redis(project, redis_url or client_env().redis_url)
    else:
        specs = _deploy_over_http(ctx, project)
    if ctx.output == "json":
        click.echo(json.dumps(specs, indent=2))
        return
    if not specs:
        click.echo(f"{project} holds no BatchAPI")
    for spec in specs:
        click.echo(f"deployed {spec['name']} (api_id {spec['api_id']})")


def _deploy_over_http(ctx: Context, project: str) -> list[dict]:
    from app.project_archive import ProjectError

    try:
        answer = ctx.call(ctx.client().deploy, project)
    except (ValueError, ProjectError) as err:
        fail(str(err))
    for warning in answer.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    return answer["apis"]


def _deploy_into_redis(project: str, redis_url: str) -> list[dict]:
    """Deploy into the job store directly (`--redis`): the public specs deployed."""
    from pathlib import Path

    import redis

    from app.config import redacted
    from app.errors import BatcheryError
    from app.store.connection import connect
    from app.store.registry import Registry, public_spec

    cortex_yaml = Path(project) / "cortex.yaml" if Path(project).is_dir() else Path(project)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)  # keys Batchery ignores
    env = client_env()
    try:
        client = connect(
            redis_url,
            master=env.redis_sentinel_master,
            sentinel_password=env.redis_sentinel_password,
            socket_connect_timeout=5,
        )
    except ValueError as err:  # not a URL of a Redis
        fail(f"the job store's URL: {redacted(str(err))}")
    try:
        return [public_spec(spec) for spec in Registry(client).deploy_file(cortex_yaml)]
    except BatcheryError as err:
        fail(err.message)
    except redis.RedisError as err:
        where = redacted(f"{redis_url}: {err}")
        fail(f"cannot reach the job store at {where} (start the stack with `make up`, or set REDIS_URL)")


# --- get -------------------------------------------------------------------------------------


@main.command()
@click.argument("api", required=False)
@click.argument("job_id", required=False, metavar="[JOB]")
@click.option(
    "-w", "--watch", is_flag=True, help="with a JOB: a live progress bar until it ends (exit 0 if it succeeded)"
)
@click.option(
    "--interval",
    type=click.FloatRange(min=MIN_INTERVAL),
    default=0.5,
    show_default=True,
    help=f"seconds between two polls of --watch (at least {MIN_INTERVAL})",
)
@options
def get(api: str | None, job_id: str | None, watch: bool, interval: float, url: str | None, output: str | None) -> None:
    """The APIs; an API's jobs (get API); a job (get API JOB)."""
    ctx = context(url, output)
    if watch and not job_id:
        fail("--watch needs an API and a JOB: batchery get <api> <job> --watch")
    if api is None:
        show_apis(ctx)
    elif job_id is None:
        show_jobs(ctx, api)
    elif watch:
        sys.exit(watch_job(ctx, api, job_id, interval))
    else:
        show_job(ctx, api, job_id)


def show_apis(ctx: Context) -> None:
    """Print the deployed APIs (a table, or JSON); exits 1 on an HTTP error."""
    client = ctx.client()
    apis = ctx.call(client.list_apis)
    if ctx.output == "json":
        click.echo(json.dumps({"apis": apis}, indent=2))  # the answer of GET /batch
        return
    if not apis:
        click.echo("no api is deployed (batchery deploy cortex.yaml)")
        return
    table = new_table("api", "running jobs", "latest job id", "latest job status")
    for entry in apis:
        latest = entry["latest_job"] or {}
        table.add_row(
            entry["name"], str(entry["running_jobs"]), latest.get("job_id", "-"), readable(latest.get("status"))
        )
    console().print(table)


def show_jobs(ctx: Context, api: str) -> None:
    """Print an API and its jobs (a table, or JSON); exits 1 on an HTTP error."""
    answer = ctx.call(ctx.client().get_api, api)
    if ctx.output == "json":
        click.echo(json.dumps(answer, indent=2))
        return
    jobs = answer["batch_job_statuses"]
    out = console()
    if jobs:
        table = new_table("job id", "status", "progress", "failed attempts", "start time", "duration")
        for job in jobs:
            table.add_row(
                job["job_id"],
                readable(job["status"]),
                f"{job['batch_metrics']['succeeded']}/{job.get('total_batch_count', '?')}",
                str(job["batch_metrics"]["failed"]),
                clock(job.get("start_time")),
                duration(job),
            )
        out.print(table)
    else:
        out.print(f"no jobs yet for api {api}")
    out.print(f"endpoint: {answer['endpoint']}", soft_wrap=True)


def show_job(ctx: Context, api: str, job_id: str) -> None:
    """Print one job's status (a table, or JSON); exits 1 on an HTTP error."""
    answer = ctx.call(ctx.client().get_job, api, job_id)
    if ctx.output == "json":
        click.echo(json.dumps(answer, indent=2))
        return
    job = answer["job_status"]
    out = console()
    lines = [
        ("job id", job["job_id"]),
        ("status", readable(job["status"])),
        ("message", job.get("message")),
        ("created time", clock(job.get("created_time"))),
        ("start time", clock(job.get("start_time"))),
        ("end time", clock(job.get("end_time")) if job.get("end_time") else None),
        ("duration", duration(job)),
    ]
    for name, value in lines:
        if value is not None:
            out.print(f"{name}: {value}", soft_wrap=True, highlight=False)

    metrics = job["batch_metrics"]
    avg = metrics.get("avg_time_per_batch")
    stats = new_table("total", "succeeded", "failed attempts", "in queue", "avg time per batch", title="batch stats")
    stats.add_row(
        str(job.get("total_batch_count", "?")),
        str(metrics["succeeded"]),
        str(metrics["failed"]),
        str(job["batches_in_queue"]),
        seconds(avg) if avg is not None else "-",
    )
    out.print()
    out.print(stats)
    if "worker_counts" in job:
        counts = job["worker_counts"]
        workers = new_table("requested", *counts, title="worker counts")
        workers.add_row(str(job["workers"]), *(str(value) for value in counts.values()))
        out.print()
        out.print(workers)
    out.print()
    out.print(f"endpoint: {answer['endpoint']}", soft_wrap=True, highlight=False)
    spec = {
        key: job[key]
        for key in ("workers", "timeout", "sqs_dead_letter_queue", "config", "api_id", "sqs_url")
        if job.get(key) is not None
    }
    out.print("\njob spec:")
    out.print_json(data=spec)


# --- watch -----------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Batches per second over the job's last 30 s, as the API measures it (`progress`)."""

    def render(self, task) -> Text:
        rate = task.fields.get("rate")
        return Text("-- batches/s" if rate is None else f"{rate_text(rate)} batches/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at that rate, as the API estimates it; `ended` once the job has a final status."""

    def render(self, task) -> Text:
        if task.fields.get("ended"):
            return Text("ended", style="progress.elapsed")
        return Text("ETA " + eta_text(task.fields.get("eta")), style="progress.remaining")


def watch_job(ctx: Context, api: str, job_id: str, interval: float) -> int:
    """Follow a job until it ends: a progress bar (table output) or the final answer (json); 0 iff it succeeded."""
    client = ctx.client()
    if ctx.output == "json":
        answer = ctx.call(client.get_job, api, job_id)
        while not status.is_final(answer["job_status"]["status"]):
            time.sleep(interval)
            answer = ctx.call(client.get_job, api, job_id)
        click.echo(json.dumps(answer, indent=2))
        return exit_code(answer["job_status"])

    job = ctx.call(client.get_job, api, job_id)["job_status"]
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        RateColumn(),
        EtaColumn(),
        console=console(stderr=True),
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task(**bar_fields(job))
            while not status.is_final(job["status"]):
                time.sleep(interval)
                job = ctx.call(client.get_job, api, job_id)["job_status"]
                progress.update(task, **bar_fields(job))
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching job {job_id}; it goes on (batchery delete {api} {job_id} stops it)", err=True)
        return 130
    metrics = job["batch_metrics"]
    line = (
        f"job {job_id} {job['status']}: {metrics['succeeded']}/{job.get('total_batch_count', '?')} batches "
        f"succeeded, {metrics['failed']} failed attempts, {duration(job)}"
    )
    if job.get("message"):
        line += f" ({' '.join(job['message'].split())})"
    click.echo(line)
    return exit_code(job)


def bar_fields(job: dict) -> dict:
    """What the progress bar shows of a job status: the job's `progress` as the API measures it
    (batches done of the total, the rate over the last 30 s, the time left at it)."""
    figures = job.get("progress") or {}  # an API older than `progress`: an empty bar, no rate
    return {
        "description": readable(job["status"]),
        "total": figures.get("total") or None,  # None: rich draws a pulsing bar while nothing is enqueued
        "completed": figures.get("done", 0),
        "ended": status.is_final(job["status"]),
        "rate": figures.get("batches_per_second"),
        "eta": figures.get("eta_seconds"),
    }


def eta_text(left: int | None) -> str:
    """`eta_seconds` as the bar shows it: -:-- without a rate, else 0s, 12s, 3m31s, 1h02m05s."""
    if left is None:
        return "-:--"
    return seconds(left) if left else "0s"


def rate_text(rate: float) -> str:
    """161.63 -> 161.6, 0.0333 -> 0.033: a slow job's rate keeps two digits that say something."""
    return f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.2g}"


def exit_code(job: dict) -> int:
    """The exit code a command waiting for a job ends with: 0 only if it succeeded."""
    return 0 if job["status"] == status.SUCCEEDED else 1


# --- submit, delete --------------------------------------------------------------------------


@main.command()
@click.argument("api")
@click.argument("job_file", type=click.File("rb"), metavar="JOB.json")
@click.option("--dry-run", is_flag=True, help="validate only; for S3 inputs, list the files the job would read")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="submitted again with the same KEY and job, answer with the job the first submission created",
)
@options
def submit(api: str, job_file, dry_run: bool, idempotency_key: str | None, url: str | None, output: str | None) -> None:
    """Submit the job in JOB.json (`-`: standard input) to API; prints the job id."""
    ctx = context(url, output)
    try:
        job = json.loads(job_file.read())
    except ValueError as err:
        fail(f"{job_file.name} is not JSON: {err}")
    if not isinstance(job, dict):
        fail(f"{job_file.name} must hold a JSON object (the job), not {type(job).__name__}")
    answer = ctx.call(ctx.client().submit, api, job, dry_run=dry_run, idempotency_key=idempotency_key)
    if dry_run:
        click.echo(answer.rstrip("\n"))
    elif ctx.output == "json":
        click.echo(json.dumps(answer, indent=2))
    else:
        click.echo(answer["job_id"])


@main.command()
@click.argument("api")
@click.argument("job_id", metavar="[JOB]", required=False)
@click.option("-f", "--force", is_flag=True, help="without JOB: stop the API's jobs in progress, then undeploy it")
@options
def delete(api: str, job_id: str | None, force: bool, url: str | None, output: str | None) -> None:
    """Stop the job JOB of API; without JOB, undeploy API (as `cortex delete <api>`)."""
    ctx = context(url, output)
    if job_id is None:
        answer = ctx.call(ctx.client().undeploy, api, force)
    else:
        answer = ctx.call(ctx.client().stop_job, api, job_id)
    click.echo(json.dumps(answer, indent=2) if ctx.output == "json" else answer["message"])


@main.command()
@click.argument("api")
@click.argument("job_id", metavar="JOB")
@click.option(
    "--include",
    type=click.Choice(["failed", "unfinished"]),
    default="failed",
    show_default=True,
    help="unfinished: also the batches the job never ran (it was stopped or timed out)",
)
@click.option("--workers", type=int, help="the new job's workers (default: the job's)")
@click.option("--timeout", type=int, help="the new job's timeout in seconds (default: the job's)")
@options
def retry(
    api: str, job_id: str, include: str, workers: int | None, timeout: int | None, url: str | None, output: str | None
) -> None:
    """Retry the job JOB of API, which ended: a new job of its batches that failed for good; prints its id."""
    ctx = context(url, output)
    overrides = {"include": include, "workers": workers, "timeout": timeout}
    given = {name: value for name, value in overrides.items() if value is not None}
    answer = ctx.call(ctx.client().retry, api, job_id, **given)
    click.echo(json.dumps(answer, indent=2) if ctx.output == "json" else answer["job_id"])


@main.command()
@click.argument("api")
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the job ends")
@click.option(
    "--interval",
    type=click.FloatRange(min=MIN_INTERVAL),
    default=1.0,
    show_default=True,
    help=f"seconds between polls with --follow (at least {MIN_INTERVAL})",
)
@options
def logs(api: str, job_id: str, follow: bool, interval: float, url: str | None, output: str | None) -> None:
    """Print the whole log of the job JOB of API (-f: then follow it until the job ends)."""
    ctx = context(url, output)
    client = ctx.client()
    after, quiet_after_end = 0, 0
    while True:
        answer = ctx.call(client.job_logs, api, job_id, after)
        for line in answer["lines"]:
            click.echo(json.dumps(line) if ctx.output == "json" else log_line(line))
        after = answer["next"]
        if answer["lines"]:  # the API answers a page at a time: ask for the next one at once
            quiet_after_end = 0
            continue
        if not follow:  # an empty page: the end of the log as it is now
            return
        ended = answer["status"] not in status.IN_PROGRESS
        quiet_after_end = quiet_after_end + 1 if ended else 0
        # after the job ends, one more quiet poll: its last lines may still be on their way
        if quiet_after_end >= 2:
            return
        time.sleep(interval)


def log_line(line: dict) -> str:
    """`2026-11-29 03:01:02 INFO host:pid message`, then the traceback if there is one."""
    when = datetime.fromtimestamp(line["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = f"{when} {line['level'].upper():7} {line['process']}  {line['message']}"
    return text + ("\n" + line["traceback"].rstrip() if line.get("traceback") else "")


# --- formatting ------------------------------------------------------------------------------


def new_table(*columns: str, title: str | None = None) -> Table:
    """A borderless table whose columns do not wrap."""
    table = Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, title=title, title_justify="left", pad_edge=False)
    for column in table.columns:
        column.no_wrap = True
    return table


def readable(code: str | None) -> str:
    """`status_completed_with_failures` -> `completed with failures`, as Cortex's CLI prints it."""
    return code.removeprefix("status_").replace("_", " ") if code else "-"


def parse_time(value: str | None) -> datetime | None:
    """A status's RFC 3339 time as a datetime, or None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def clock(value: str | None) -> str:
    """A status's time as `YYYY-MM-DD HH:MM:SS UTC`, or `-`."""
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def duration(job: dict) -> str:
    """How long the job has run (or ran, once ended), or `-` before it starts."""
    start = parse_time(job.get("start_time"))
    if start is None:
        return "-"
    end = parse_time(job.get("end_time")) or datetime.now(UTC)
    return seconds((end - start).total_seconds())


def seconds(value: float) -> str:
    """0.0123 -> 12.3ms, 1.234 -> 1.23s, 75 -> 1m15s, 3725 -> 1h02m05s."""
    if value < 1:
        return f"{value * 1000:.3g}ms"
    if value < 60:
        return f"{value:.3g}s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# --- pause, resume ---------------------------------------------------------------------------


@main.command()
@click.argument("api")
@click.argument("job_id", metavar="JOB")
@options
def pause(api: str, job_id: str, url: str | None, output: str | None) -> None:
    """Pause the job JOB of API: no batch of it starts until `batchery resume`."""
    ctx = context(url, output)
    show_control(ctx, ctx.call(ctx.client().pause, api, job_id))


@main.command()
@click.argument("api")
@click.argument("job_id", metavar="JOB")
@options
def resume(api: str, job_id: str, url: str | None, output: str | None) -> None:
    """Resume the paused job JOB of API where it stopped."""
    ctx = context(url, output)
    show_control(ctx, ctx.call(ctx.client().resume, api, job_id))


def show_control(ctx: Context, answer: dict) -> None:
    """Print a pause's or a resume's answer: `job <id>: paused, 12 batches in queue`, or the JSON."""
    if ctx.output == "json":
        click.echo(json.dumps(answer, indent=2))
        return
    job = answer["job_status"]
    click.echo(f"job {job['job_id']}: {readable(job['status'])}, {job['batches_in_queue']} batches in queue")


if __name__ == "__main__":
    main(prog_name="batchery")

"""A Python client of Batchery's HTTP API (the Cortex Batch API endpoints, plus `GET /batch`).

    from app.client import Client
    client = Client()     # BATCHERY_URL and BATCHERY_API_TOKEN, as the CLI; or Client(url, token=...)
    job = client.submit("sum", {"workers": 2, "item_list": {"items": [[1, 2], [3]], "batch_size": 1}})
    final = client.wait("sum", job["job_id"], timeout=60)
    print(final["status"])

It speaks HTTP only (no Redis, no Celery), so it runs anywhere the API is reachable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from app import project_archive
from app.config import client_env
from app.model import status

DEFAULT_TIMEOUT = 30.0  # seconds for one HTTP request


class BatcheryAPIError(Exception):
    """The API answered an error: its HTTP status, its `kind` and its `message`."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(status, kind, message)
        self.status = status
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return " ".join(f"{self.message} ({self.kind}, HTTP {self.status})".split())  # always one line


class BatcheryConnectionError(Exception):
    """The API could not be reached (refused, unknown host, no answer in time)."""

    def __init__(self, url: str, reason: str):
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach the Batchery API at {self.url}: {self.reason}"


class Client:
    """Batchery's API at `base_url`; `timeout` is the limit of each HTTP request, in seconds;
    `token` is sent as `Authorization: Bearer <token>` (the API's BATCHERY_API_TOKEN, if it sets one).

    The CLI's rule for both: what is passed, else the environment (`BATCHERY_URL`, else
    `http://127.0.0.1:$PORT`, 8080; `BATCHERY_API_TOKEN`), else none. `token=""` sends no token.

    Every method raises BatcheryAPIError when the API answers an error (4xx/5xx), and
    BatcheryConnectionError when it cannot be reached.
    """

    def __init__(self, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT, token: str | None = None):
        env = client_env()
        self.base_url = (base_url or env.url).rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        token = env.token if token is None else token
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def submit(self, api: str, job: dict, dry_run: bool = False, idempotency_key: str | None = None) -> dict | str:
        """Submit a job to `api`: the job spec (a dict, with `job_id`).

        With `dry_run=True` nothing is created and the answer is the API's text: for S3 inputs the
        files the job would read, one a line, then `validations passed`. With `idempotency_key` (e.g.
        a UUID), submitting the same job again with the same key (after a timeout, say) answers with
        the job the first call created instead of creating another.
        Raises BatcheryAPIError: 400 invalid job or key, 404 unknown API, 409 the key was used with
        another job, 413 body over 10 MiB.
        """
        params = {"dryRun": "true"} if dry_run else None
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        body = json.dumps(job).encode()
        response = self._request("POST", self._api_path(api), params=params, data=body, headers=headers)
        return response.text if dry_run else response.json()

    def get_job(self, api: str, job_id: str) -> dict:
        """The job's full status answer: `job_status`, `endpoint` and `api_spec`.

        Raises BatcheryAPIError: 404 unknown API or job.
        """
        return self._request("GET", self._api_path(api), params={"jobID": job_id}).json()

    def stop_job(self, api: str, job_id: str) -> dict:
        """Stop a job: `{"message": "stopped job <job_id>"}`.

        Raises BatcheryAPIError: 400 the job already ended, 404 unknown API or job.
        """
        return self._request("DELETE", self._api_path(api), params={"jobID": job_id}).json()

    def job_logs(self, api: str, job_id: str, after: int = 0) -> dict:
        """The job's log lines numbered above `after`: `job_id`, `status`, `lines` and `next`.

        Raises BatcheryAPIError: 404 unknown API or job.
        """
        return self._request("GET", f"{self._api_path(api)}/logs", params={"jobID": job_id, "after": after}).json()

    def retry(self, api: str, job_id: str, **overrides: Any) -> dict:
        """Retry a job that ended: a new job of its batches that failed for good, as they were; the
        new job's spec (with `parent_job_id`). `overrides`: `include="unfinished"` (also the batches
        it never ran), `workers`, `timeout`, `config`, `sqs_dead_letter_queue`.

        Raises BatcheryAPIError: 400 the job is in progress, has nothing to retry or an override is
        invalid; 404 unknown API or job.
        """
        path = f"{self._api_path(api)}/{quote(job_id, safe='')}/retry"
        return self._request("POST", path, data=json.dumps(overrides).encode()).json()

    def list_jobs(self, api: str) -> list[dict]:
        """The API's job statuses: the jobs in progress, then the most recent, newest first.

        Raises BatcheryAPIError: 404 unknown API.
        """
        return self.get_api(api)["batch_job_statuses"]

    def get_api(self, api: str) -> dict:
        """The API's answer: `spec`, `endpoint` and `batch_job_statuses`. Raises BatcheryAPIError: 404 unknown API."""
        return self._request("GET", self._api_path(api)).json()

    def list_apis(self) -> list[dict]:
        """The deployed APIs: `name`, `endpoint`, `running_jobs` and `latest_job` (`job_id`, `status`, or None)."""
        return self._request("GET", "/batch").json()["apis"]

    def wait(self, api: str, job_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Poll the job until it ends and return its final `job_status`; `timeout` None waits for ever.

        Raises TimeoutError (naming the job and its last status) if it has not ended in `timeout`
        seconds, and BatcheryAPIError as get_job does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(api, job_id)["job_status"]
            if status.is_final(job["status"]):
                return job
            if deadline is not None and time.monotonic() >= deadline:
                last = job["status"]
                raise TimeoutError(f"job {job_id} of api {api} did not end within {timeout:g}s (last status: {last})")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def pause(self, api: str, job_id: str) -> dict:
        """Pause a job (no batch of it starts until it is resumed): its status answer, as `get_job`'s.

        Raises BatcheryAPIError: 400 the job already ended, 404 unknown API or job.
        """
        return self._request("POST", f"{self._api_path(api)}/{quote(job_id, safe='')}/pause").json()

    def resume(self, api: str, job_id: str) -> dict:
        """Resume a paused job where it stopped: its status answer, as `get_job`'s.

        Raises BatcheryAPIError: 400 the job already ended, 404 unknown API or job.
        """
        return self._request("POST", f"{self._api_path(api)}/{quote(job_id, safe='')}/resume").json()

    def deploy(self, path: str | Path) -> dict:
        """Deploy the BatchAPIs of a project folder (or of the folder of a cortex.yaml) over HTTP:
        the folder is packed (`.cortexignore` honoured) and uploaded. The answer: `apis` deployed
        (`name`, `api_id`, `project_id`, `endpoint`) and `warnings` (keys Batchery ignores).

        Raises BatcheryAPIError: 400 an invalid project (the message names the file and line),
        413 over BATCHERY_MAX_PROJECT_BYTES; ValueError when the folder has no cortex.yaml.
        """
        folder = Path(path)
        if folder.is_file():
            if folder.name != "cortex.yaml":
                raise ValueError(f"{path}: deploy a project folder, or its cortex.yaml (named cortex.yaml)")
            folder = folder.parent
        if not (folder / "cortex.yaml").is_file():
            raise ValueError(f"{path}: no cortex.yaml in this folder")
        packed = project_archive.pack(folder)
        headers = {"Content-Type": "application/gzip"}
        # a project takes longer to upload and check than a job: at least a few minutes
        response = self._request("POST", "/apis", data=packed.blob, headers=headers, timeout=max(self.timeout, 300))
        return response.json()

    def apis(self) -> list[dict]:
        """Every deployed API with its ids: `name`, `api_id`, `project_id`, `compute`, `python_path`,
        `deployed_at`, `endpoint`, `spec`."""
        return self._request("GET", "/apis").json()["apis"]

    def undeploy(self, api: str, force: bool = False) -> dict:
        """Undeploy an API: `{"message", "stopped_jobs"}`; `force=True` stops its jobs in progress first.

        Raises BatcheryAPIError: 404 unknown API, 409 jobs of it in progress (without force).
        """
        params = {"force": "true"} if force else None
        return self._request("DELETE", "/apis/" + quote(api, safe=""), params=params).json()

    def _api_path(self, api: str) -> str:
        return "/batch/" + quote(api, safe="")

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        try:
            kwargs.setdefault("timeout", self.timeout)
            response = self.session.request(method, url, **kwargs)
        except requests.Timeout:
            raise BatcheryConnectionError(self.base_url, f"no answer within {kwargs['timeout']:g}s") from None
        except requests.ConnectionError as err:
            raise BatcheryConnectionError(self.base_url, _reason(err)) from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response


def _api_error(response: requests.Response) -> BatcheryAPIError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        return BatcheryAPIError(response.status_code, str(body.get("kind", "error")), str(body["message"]))
    text = response.text.strip()[:200] or response.reason or "no body"
    return BatcheryAPIError(response.status_code, "http_error", text)


def _reason(err: requests.ConnectionError) -> str:
    text = str(err)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text.splitlines()[0] if text else type(err).__name__

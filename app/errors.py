"""Batchery's errors: a small tree, mapped to HTTP at the blueprint boundary."""


class BatcheryError(Exception):
    """Base of every error a user can act on; `kind` names it in the JSON error body."""

    status = 400
    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(BatcheryError):
    """The request body or query is malformed or breaks a submission rule."""

    kind = "invalid_request"


class PayloadTooLarge(BatcheryError):
    """The request body is over the 10 MiB limit."""

    status = 413
    kind = "payload_too_large"
    MESSAGE = "the request body is over 10 MiB: submit large inputs through S3 (file_path_lister or delimited_files)"


class ApiNotFound(BatcheryError):
    """No Batch API of that name is deployed."""

    status = 404
    kind = "api_not_found"


class JobNotFound(BatcheryError):
    """No job of that id exists for the API."""

    status = 404
    kind = "job_not_found"


class JobNotRunning(BatcheryError):
    """The job already reached a final status, so it cannot be stopped."""

    kind = "job_not_running"


class IdempotencyConflict(BatcheryError):
    """An Idempotency-Key already stands for another request (or for one still being processed)."""

    status = 409
    kind = "idempotency_conflict"


class DeployError(BatcheryError):
    """A cortex.yaml or its predictor cannot be deployed."""

    kind = "deploy_error"


class BrokerUnavailable(BatcheryError):
    """The broker could not take the job's batches."""

    status = 503
    kind = "broker_unavailable"

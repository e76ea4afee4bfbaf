"""What travels between the API and the workers, named in one place.

Celery task names are part of the wire format: the API publishes by name (`app/` never imports
`workers/`), and the store's Lua builds a batch's message with the same name.
"""

RUN_BATCH = "batchery.run_batch"
FINALIZE_JOB = "batchery.finalize_job"
ENQUEUE_JOB = "batchery.enqueue_job"

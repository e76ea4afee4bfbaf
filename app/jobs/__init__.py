"""A job's lifecycle: submission, batching, the S3 enqueuer, the watchdog, and the services a
process builds once to run them."""

"""The broker as Batchery uses it: the shared Celery configuration, publishing by task name, the
queue's depth and health, and the dead-letter queues."""

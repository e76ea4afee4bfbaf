"""The job's vocabulary, shared by every layer: its statuses, its spec and status view, and the
names and formats that travel between processes. Pure Python: no I/O, no third-party imports."""

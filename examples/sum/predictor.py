"""Cortex's load-test `sum` API: each item is a list of numbers; the job's result is their sums.

Each batch writes its sums to <results_dir>/<job_id>/<batch_id>.json; `on_job_complete` gathers
them into one file per job, <results_dir>/<job_id>.json (Cortex wrote the same to S3). A job
submitted with `output` also gets the sums from `predict`'s return value, one NDJSON line per item.
"""

import json
import os
from pathlib import Path


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.job_id = job_spec["job_id"]
        self.results = Path(config.get("results_dir", "results"))
        self.parts = self.results / self.job_id
        self.parts.mkdir(parents=True, exist_ok=True)

    def predict(self, payload, batch_id):
        sums = [sum(numbers) for numbers in payload]
        part = self.parts / f"{batch_id}.json"
        tmp = part.with_suffix(".tmp")
        tmp.write_text(json.dumps(sums))
        os.replace(tmp, part)  # a redelivered batch overwrites, never duplicates
        return sums  # written as the batch's predictions when the job asks for its output

    def on_job_complete(self):
        parts = sorted(self.parts.glob("*.json"), key=lambda p: int(p.stem))
        sums = [s for part in parts for s in json.loads(part.read_text())]
        summary = {"job_id": self.job_id, "items": len(sums), "batches": len(parts), "total": sum(sums)}
        (self.results / f"{self.job_id}.json").write_text(json.dumps(summary, indent=2) + "\n")

"""Real work on text: per-document statistics and the job's most frequent words.

Each item is a document (a string, or an object with a "text" field). Each batch writes one JSON
line per document (words, sentences, reading time, its top words) to
<results_dir>/<job_id>/<batch_id>.jsonl; `on_job_complete` writes the job's vocabulary summary.
"""

import json
import os
import re
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]*")
SENTENCE_END = re.compile(r"[.!?]+(\s|$)")
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "he",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
    ]
)


def document_text(item):
    return item["text"] if isinstance(item, dict) else str(item)


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.job_id = job_spec["job_id"]
        self.top_words = int(config.get("top_words", 10))
        self.results = Path(config.get("results_dir", "results"))
        self.parts = self.results / self.job_id
        self.parts.mkdir(parents=True, exist_ok=True)

    def predict(self, payload, batch_id):
        lines = [json.dumps(self.describe(item)) for item in payload]
        part = self.parts / f"{batch_id}.jsonl"
        tmp = part.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, part)

    def describe(self, item):
        text = document_text(item)
        words = [w.lower() for w in WORD.findall(text)]
        counts = Counter(w for w in words if w not in STOP_WORDS)
        return {
            "id": item.get("id") if isinstance(item, dict) else None,
            "words": len(words),
            "sentences": len(SENTENCE_END.findall(text)) or (1 if words else 0),
            "reading_seconds": round(len(words) / 4.0, 1),  # ~240 words a minute
            "top_words": [w for w, _ in counts.most_common(self.top_words)],
            "vocabulary": dict(counts),
        }

    def on_job_complete(self):
        totals, documents, words = Counter(), 0, 0
        for part in self.parts.glob("*.jsonl"):
            for line in part.read_text().splitlines():
                doc = json.loads(line)
                documents += 1
                words += doc["words"]
                totals.update(doc["vocabulary"])
        summary = {
            "job_id": self.job_id,
            "documents": documents,
            "words": words,
            "top_words": totals.most_common(self.top_words),
        }
        (self.results / f"{self.job_id}.json").write_text(json.dumps(summary, indent=2) + "\n")

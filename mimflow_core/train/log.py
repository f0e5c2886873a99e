"""The run's ``log.jsonl``: one JSON object per line (a start record, then the mean of every logged window)."""
from __future__ import annotations

import json
from pathlib import Path

from mimflow_core.atomic import atomic_write


class JsonlLog:
    """Append-only JSONL training log; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
            atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept)), mode="w")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

"""The run's ``log.jsonl``: one JSON object per line (a start record, then the mean of every logged window)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from mimflow_core.atomic import atomic_write
from mimflow_core.errors import MIMFlowError


class JsonlLog:
    """Append-only JSONL training log; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line, record in read_records(path) if record.get("step", 0) <= resumed_step]
            atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept)), mode="w")

    def write(self, record: dict) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise MIMFlowError(f"{self.path}: cannot append a line ({e.strerror or e}); the lines before it and "
                                   "the last checkpoint are intact (--resume drops a torn last line)") from None


def read_records(path: Path) -> list[tuple[str, dict]]:
    """``(line, record)`` of every line of a log, with the last line dropped (and a warning) when it is torn.

    A run killed while appending leaves its last line cut short; every line before it is complete, and
    is kept. A bad line anywhere else is damage this cannot repair, and is one line naming it.
    """
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: dropped its torn last line {number} (a run stopped while writing it)")
                break
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            raise MIMFlowError(f"{path}: line {number} is not a log record (a JSON object with an integer step); "
                               "repair or remove the file to resume")
        records.append((line, record))
    return records

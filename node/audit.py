"""The audit log: who sent us what, and which results went where (JSON lines, one event per line).

Unlike the operational log it names studies and instances by UID: that is its purpose. It lives
in the data directory (``audit.jsonl``, mode 0600) with the journal, and contains no patient
names or IDs. Events: ``association`` (calling AE, peer), ``received`` (instance stored),
``result`` (study processed, model versions), ``delivered`` and ``dead_letter`` (destination,
kind, identity).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    """Append-only JSON-lines file, safe to write from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        record = {"at": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every event in ``path`` (for tests and ``jq``-less inspection)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

"""JSON-lines metric logger: one JSON object per line, written by the main rank only.

Each record gets a ``time`` (UNIX seconds) field unless it has one. On resume, open the
logger with ``resume_from=<first iteration to run>``: records from a previous attempt whose
``iteration`` is at or past that point are dropped, so the file reads as one clean run.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from training import distributed as du


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """All records of a metrics file (skips a torn last line)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLogger:
    """Append JSON records to ``path`` (no-op on non-main ranks unless ``enabled`` says otherwise)."""

    def __init__(self, path: Path | str, enabled: bool | None = None, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.enabled = du.is_main() if enabled is None else bool(enabled)
        self._fh = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("iteration", -1)) < resume_from]
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        elif resume_from is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        rec = {"time": time.time(), **record}
        self._fh.write(json.dumps(_clean(rec)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

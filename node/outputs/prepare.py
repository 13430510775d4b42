"""Encode one result for every configured destination and write the payloads, ready to queue.

The payload files (``<data_dir>/outbox/<kind>-<identity>.dcm|.hl7``) are written and fsynced
before the journal transaction that queues them (Journal.finish_study), so a queued output always
has its bytes on disk. A file left by a crash before that transaction is simply rewritten, byte
for byte, when the study is processed again (the encoders are deterministic).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Callable

from pydicom.dataset import Dataset

from node.config import Settings
from node.outputs.common import NotApplicable
from node.outputs.source import SourceStudy, output_identity

log = logging.getLogger("mammo_node.outputs")

HL7_DESTINATION = "hl7"


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sr_builders() -> dict[str, Callable[[SourceStudy, dict[str, Any], float], Dataset]]:
    from node.outputs.sr_cad import build_mammography_cad_sr
    from node.outputs.sr_tid1500 import build_tid1500_sr

    return {
        "tid1500": lambda s, r, t: build_tid1500_sr(s, r, created_at=t),
        "tid4000": lambda s, r, t: build_mammography_cad_sr(s, r, created_at=t),
    }


class OutputPreparer:
    """Builds and stores the outputs of results for the destinations in ``settings.outputs``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.data_dir / "outbox"

    @property
    def enabled(self) -> bool:
        return bool(self.settings.outputs.dicom) or self.settings.outputs.hl7 is not None

    def prepare(self, source: SourceStudy, result: dict[str, Any], created_at: float) -> list[dict[str, Any]]:
        """Outbox rows (destination, kind, identity, payload path relative to data_dir) for ``result``."""
        fsync = self.settings.node.fsync
        rows: list[dict[str, Any]] = []
        built: dict[str, tuple[str, str] | None] = {}
        builders = _sr_builders()
        for destination in self.settings.outputs.dicom:
            for kind in destination.reports:
                if kind not in built:
                    try:
                        ds = builders[kind](source, result, created_at)
                    except NotApplicable as exc:
                        log.info("no %s output for this result: %s", kind, exc)
                        built[kind] = None
                        continue
                    identity = str(ds.SOPInstanceUID)
                    path = self.dir / f"{kind}-{identity}.dcm"
                    _write_atomic(path, _dicom_bytes(ds), fsync)
                    built[kind] = (identity, str(path.relative_to(self.settings.data_dir)))
                if built[kind] is not None:
                    identity, payload = built[kind]  # type: ignore[misc]
                    rows.append({"destination": destination.name, "kind": kind, "identity": identity,
                                 "payload": payload})
        hl7 = self.settings.outputs.hl7
        if hl7 is not None:
            from node.outputs.hl7 import build_oru, control_id

            identity = control_id(source.study_uid, result)
            try:
                message = build_oru(source, result, hl7, created_at=created_at)
            except NotApplicable as exc:
                log.warning("no HL7 result for this study: %s", exc)
                return rows
            path = self.dir / f"oru-{identity}.hl7"
            _write_atomic(path, message.encode("utf-8"), fsync)
            rows.append({"destination": HL7_DESTINATION, "kind": "oru", "identity": identity,
                         "payload": str(path.relative_to(self.settings.data_dir))})
        return rows


__all__ = ["HL7_DESTINATION", "NotApplicable", "OutputPreparer", "output_identity"]

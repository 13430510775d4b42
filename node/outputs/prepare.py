"""Which outputs a result gets (planned with the result) and their bytes (rendered at delivery).

Planning is cheap and happens in the pipeline, inside the transaction that records the result:
each configured destination gets one outbox row per output kind it wants, with the output's
identity (SOP Instance UID, HL7 control ID) already fixed, since identities are hashes of the
result. Rendering (highdicom, hl7apy STRICT validation: a few hundred milliseconds per study)
happens on the delivery threads, just before the first send, so the pipeline is free for the
next study. The encoders are deterministic: the payload file (``<data_dir>/outbox/<kind>-<identity>
.dcm|.hl7``) can be rebuilt at any time from the journal (result, its time, the selected images),
and a rebuilt output whose identity no longer matches its row (the study was processed again
with a different result meanwhile) is reported as superseded, never sent under a wrong identity.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.config import Settings
from node.fsutil import write_atomic
from node.journal import Journal
from node.outputs.common import NotApplicable
from node.outputs.source import SourceStudy, output_identity

log = logging.getLogger("mammo_node.outputs")

HL7_DESTINATION = "hl7"
SR_KINDS = ("tid1500", "tid4000")


class OutputSuperseded(Exception):
    """The row's result was replaced by a different one (the study was processed again)."""


def _dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_output(kind: str, source: SourceStudy, result: dict[str, Any], created_at: float,
                 settings: Settings) -> tuple[str, bytes]:
    """(identity, payload bytes) of one output kind; raises NotApplicable where it has nothing to say."""
    if kind == "tid1500":
        from node.outputs.sr_tid1500 import build_tid1500_sr

        ds = build_tid1500_sr(source, result, created_at=created_at)
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind == "tid4000":
        from node.outputs.sr_cad import build_mammography_cad_sr

        ds = build_mammography_cad_sr(source, result, created_at=created_at)
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind == "oru":
        from node.outputs.hl7 import build_oru, control_id

        assert settings.outputs.hl7 is not None
        message = build_oru(source, result, settings.outputs.hl7, created_at=created_at)
        return control_id(source.study_uid, result), message.encode("utf-8")
    raise ValueError(f"unknown output kind {kind!r}")


def planned_identity(kind: str, source: SourceStudy, result: dict[str, Any]) -> str:
    """The identity an output will have, without building it; NotApplicable where none is made."""
    if kind == "tid1500":
        if result.get("status") == "incomplete" or not result.get("breasts"):
            raise NotApplicable("no model ran (views missing): no TID 1500 SR")
        return output_identity(source.study_uid, result, kind).sop_instance_uid
    if kind == "tid4000":
        return output_identity(source.study_uid, result, kind).sop_instance_uid
    if kind == "oru":
        from node.outputs.hl7 import control_id

        if not str(source.get("PatientID", "")).strip():
            raise NotApplicable("the source study has no PatientID; an ORU^R01 needs PID-3")
        return control_id(source.study_uid, result)
    raise ValueError(f"unknown output kind {kind!r}")


def selected_sources(journal: Journal, data_dir: Path, study_uid: str) -> SourceStudy | None:
    """The images the models saw (the study's selection), headers only; None when there are none."""
    study = journal.get_study(study_uid)
    if study is None or not study.selection:
        return None
    paths = {i.id: data_dir / i.path for i in journal.study_instances(study_uid)}
    chosen = {p: paths[c["instance_id"]] for p, c in study.selection.get("positions", {}).items()
              if c.get("instance_id") in paths}
    return SourceStudy.from_files(chosen) if chosen else None


class OutputPreparer:
    """Plans the outputs of results for ``settings.outputs`` and renders their payloads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.data_dir / "outbox"

    @property
    def enabled(self) -> bool:
        return bool(self.settings.outputs.dicom) or self.settings.outputs.hl7 is not None

    def _wanted(self) -> list[tuple[str, str]]:
        """(destination, kind) pairs, in configuration order."""
        pairs = [(d.name, kind) for d in self.settings.outputs.dicom for kind in d.reports]
        if self.settings.outputs.hl7 is not None:
            pairs.append((HL7_DESTINATION, "oru"))
        return pairs

    def payload_path(self, kind: str, identity: str) -> str:
        suffix = "hl7" if kind == "oru" else "dcm"
        return str((self.dir / f"{kind}-{identity}.{suffix}").relative_to(self.settings.data_dir))

    def plan(self, source: SourceStudy, result: dict[str, Any]) -> list[dict[str, Any]]:
        """Outbox rows (destination, kind, identity, payload path relative to data_dir) for ``result``."""
        rows: list[dict[str, Any]] = []
        identities: dict[str, str | None] = {}
        for destination, kind in self._wanted():
            if kind not in identities:
                try:
                    identities[kind] = planned_identity(kind, source, result)
                except NotApplicable as exc:
                    log.info("no %s output for this result: %s", kind, exc)
                    identities[kind] = None
            identity = identities[kind]
            if identity is not None:
                rows.append({"destination": destination, "kind": kind, "identity": identity,
                             "payload": self.payload_path(kind, identity)})
        return rows

    def render(self, journal: Journal, study_uid: str, kind: str, identity: str) -> Path:
        """The payload file of an outbox row, built from the journal if it is not on disk yet."""
        path = self.settings.data_dir / self.payload_path(kind, identity)
        if path.exists():
            return path
        result = journal.get_result(study_uid)
        created_at = journal.result_created_at(study_uid)
        source = selected_sources(journal, self.settings.data_dir, study_uid)
        if result is None or created_at is None or source is None:
            raise OutputSuperseded("the study's result or its images are no longer in the journal")
        built_identity, payload = build_output(kind, source, result, created_at, self.settings)
        if built_identity != identity:
            raise OutputSuperseded("the study was processed again with a different result; "
                                   "its new outputs are queued separately")
        write_atomic(path, payload, self.settings.node.fsync)
        return path


__all__ = ["HL7_DESTINATION", "NotApplicable", "OutputPreparer", "OutputSuperseded", "build_output",
           "planned_identity", "selected_sources"]

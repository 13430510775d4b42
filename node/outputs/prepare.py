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
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.config import Settings
from node.fsutil import write_atomic
from node.journal import Journal
from node.logref import study_ref
from node.outputs.amend import delivered_identities, replaced_outputs
from node.outputs.common import TID1500_KINDS, NotApplicable, installation_device_uid, report_family
from node.outputs.source import SourceStudy
from node.study_result import DocumentRef, StudyResult

log = logging.getLogger("mammo_node.outputs")

HL7_DESTINATION = "hl7"
IMAGE_KINDS = ("gsps", "heatmap_sc")  # one instance per source image (node.outputs.gsps, .heatmap_sc)
SR_KINDS = (*TID1500_KINDS.values(), "tid4000")  # one TID 1500 kind per SOP class a destination takes
_TID1500_CLASS = {kind: name for name, kind in TID1500_KINDS.items()}


class OutputSuperseded(Exception):
    """The row's result was replaced by a different one (the study was processed again)."""


def _dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def device_uid(settings: Settings) -> str:
    """This installation's Device Observer UID (made in the data directory on first use)."""
    uid = installation_device_uid(settings.data_dir, fsync=settings.node.fsync)
    assert uid is not None
    return uid


def build_output(kind: str, source: SourceStudy, result: StudyResult, created_at: float,
                 settings: Settings, identity: str | None = None) -> tuple[str, bytes]:
    """(identity, payload bytes) of one output kind; raises NotApplicable where it has nothing to say.
    Kinds with one instance per source image (IMAGE_KINDS) build the one planned as ``identity``."""
    if kind == "gsps":
        from node.outputs.gsps import build_presentation_state

        try:
            ds = build_presentation_state(source, result, created_at=created_at, device_uid=device_uid(settings),
                                          identity=str(identity))
        except LookupError:
            raise OutputSuperseded("the study was processed again with a different result") from None
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind == "heatmap_sc":
        from node.outputs.heatmap_sc import build_secondary_capture

        try:
            ds = build_secondary_capture(source, result, created_at=created_at, device_uid=device_uid(settings),
                                         identity=str(identity))
        except LookupError:
            raise OutputSuperseded("the study was processed again with a different result") from None
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind in _TID1500_CLASS:
        from node.outputs.sr_tid1500 import build_tid1500_sr

        ds = build_tid1500_sr(source, result, created_at=created_at, device_uid=device_uid(settings),
                              sop_class=_TID1500_CLASS[kind])
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind == "tid4000":
        from node.outputs.sr_cad import build_mammography_cad_sr

        ds = build_mammography_cad_sr(source, result, created_at=created_at, device_uid=device_uid(settings))
        return str(ds.SOPInstanceUID), _dicom_bytes(ds)
    if kind == "oru":
        from node.outputs.hl7 import build_oru
        from node.outputs.identity import control_id

        assert settings.outputs.hl7 is not None
        message = build_oru(source, result, settings.outputs.hl7, created_at=created_at)
        return control_id(source.study_uid, result), message.encode("utf-8")
    raise ValueError(f"unknown output kind {kind!r}")


def planned_document(kind: str, source: SourceStudy, result: StudyResult, created_at: float,
                     device: str) -> DocumentRef:
    """What an SR of ``kind`` will be known by (UIDs, SOP class, numbers), without building it;
    NotApplicable where none is made. The same functions as the writers', so they agree."""
    from node.outputs.amend import SR_SOP_CLASSES, document_numbers
    from node.outputs.identity import document_identity

    if report_family(kind) == "tid1500" and not result.has_model_output:
        raise NotApplicable("no model ran (views missing): no TID 1500 SR")
    ident = document_identity(source, result, kind, created_at, device_uid=device, extra=[SR_SOP_CLASSES[kind]])
    series_number, instance_number = document_numbers(result, kind, ident.series_instance_uid)
    return DocumentRef(study_uid=source.study_uid, series_uid=ident.series_instance_uid,
                       sop_instance_uid=ident.sop_instance_uid, sop_class_uid=SR_SOP_CLASSES[kind],
                       series_number=series_number, instance_number=instance_number)


def planned_identity(kind: str, source: SourceStudy, result: StudyResult, created_at: float,
                     settings: Settings) -> str:
    """The identity an output will have, without building it; NotApplicable where none is made."""
    if kind in SR_KINDS:
        return planned_document(kind, source, result, created_at, device_uid(settings)).sop_instance_uid
    if kind == "oru":
        from node.outputs.identity import control_id

        if not str(source.get("PatientID", "")).strip():
            raise NotApplicable("the source study has no PatientID; an ORU^R01 needs PID-3")
        return control_id(source.study_uid, result)
    raise ValueError(f"unknown output kind {kind!r}")


def journaled_result(journal: Journal, study_uid: str) -> StudyResult | None:
    """The study's result as the journal keeps it (JSON), typed for the encoders; None when there is none."""
    data = journal.get_result(study_uid)
    return None if data is None else StudyResult.from_json(data)


def selected_paths(journal: Journal, data_dir: Path, study_uid: str) -> dict[str, Path]:
    """``{position: file}`` of the images the models saw (the study's selection)."""
    study = journal.get_study(study_uid)
    if study is None or not study.selection:
        return {}
    paths = {i.id: data_dir / i.path for i in journal.study_instances(study_uid)}
    return {p: paths[c["instance_id"]] for p, c in study.selection.get("positions", {}).items()
            if c.get("instance_id") in paths}


def selected_sources(journal: Journal, data_dir: Path, study_uid: str) -> SourceStudy | None:
    """The images the models saw (the study's selection), headers only; None when there are none."""
    chosen = selected_paths(journal, data_dir, study_uid)
    return SourceStudy.from_files(chosen) if chosen else None


class SourceCache:
    """The parsed source headers of the last few studies, by (study, selected files): planning reads
    them once and every output of the study is rendered from the same objects instead of reading
    the four headers again per output. The stored files never change, so an entry is exactly what
    :func:`selected_sources` would read; a missing entry is read from disk (a restart, a rebuild)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], SourceStudy] = OrderedDict()

    def get(self, journal: Journal, data_dir: Path, study_uid: str) -> SourceStudy | None:
        chosen = selected_paths(journal, data_dir, study_uid)
        if not chosen:
            return None
        key = (study_uid, tuple(sorted((p, str(f)) for p, f in chosen.items())))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        source = SourceStudy.from_files(chosen)
        with self._lock:
            self._entries[key] = source
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return source


class OutputPreparer:
    """Plans the outputs of results for ``settings.outputs`` and renders their payloads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.data_dir / "outbox"
        self.sources = SourceCache()
        if settings.data_dir.is_dir():  # the node's start: give the installation its device UID now,
            device_uid(settings)        # so `mammo-node status` shows it before the first SR

    @property
    def enabled(self) -> bool:
        return bool(self.settings.outputs.dicom) or self.settings.outputs.hl7 is not None

    def _wanted(self) -> list[tuple[str, str]]:
        """(destination, kind) pairs, in configuration order; a destination's TID 1500 is the kind of
        the SOP class it stores (its ``tid1500_sop_class``)."""
        pairs = [(d.name, TID1500_KINDS[d.tid1500_sop_class] if kind == "tid1500" else kind)
                 for d in self.settings.outputs.dicom for kind in d.reports]
        if self.settings.outputs.hl7 is not None:
            pairs.append((HL7_DESTINATION, "oru"))
        return pairs

    def payload_path(self, kind: str, identity: str) -> str:
        suffix = "hl7" if kind == "oru" else "dcm"
        return str((self.dir / f"{kind}-{identity}.{suffix}").relative_to(self.settings.data_dir))

    def plan_study(self, journal: Journal, data_dir: Path, study_uid: str, result: StudyResult,
                   created_at: float) -> tuple[StudyResult, list[dict[str, Any]]]:
        """Everything the pipeline needs for a new result, in one call: the result as it is to be
        journaled and the outbox rows of it (rendered later, on the delivery threads). A result that
        changes an earlier, delivered one records what it replaces (node.outputs.amend); the
        selected images' headers are read once here and kept for rendering (``sources``)."""
        if not self.enabled:
            return result, []
        replaces = replaced_outputs(journaled_result(journal, study_uid), result, study_uid,
                                    delivered_identities(journal, study_uid))
        if replaces:
            result = replace(result, replaces=replaces)
        source = self.sources.get(journal, data_dir, study_uid)
        if source is None:
            log.warning("study %s: no selected image to reference, no outputs sent", study_ref(study_uid))
            return result, []
        return self.plan(source, result, created_at)

    def plan(self, source: SourceStudy, result: StudyResult,
             created_at: float) -> tuple[StudyResult, list[dict[str, Any]]]:
        """``result`` with each planned SR recorded in its ``documents`` (UIDs, SOP class, numbers: a
        later result of the study names it as its predecessor), and its outbox rows (destination,
        kind, identity, payload path relative to data_dir), journaled at ``created_at``."""
        rows: list[dict[str, Any]] = []
        identities: dict[str, str | list[str] | None] = {}
        documents: dict[str, DocumentRef] = {}
        for destination, kind in self._wanted():
            if kind not in identities:
                try:
                    if kind in SR_KINDS:
                        documents[kind] = planned_document(kind, source, result, created_at,
                                                           device_uid(self.settings))
                        identities[kind] = documents[kind].sop_instance_uid
                    elif kind in IMAGE_KINDS:
                        from node.outputs.gsps import planned_states
                        from node.outputs.heatmap_sc import planned_captures

                        plan = planned_states if kind == "gsps" else planned_captures
                        identities[kind] = [uid for _, uid in plan(source, result, created_at,
                                                                   device_uid(self.settings))]
                    else:
                        identities[kind] = planned_identity(kind, source, result, created_at, self.settings)
                except NotApplicable as exc:
                    log.info("no %s output for this result: %s", kind, exc)
                    identities[kind] = None
            planned = identities[kind]
            for identity in planned if isinstance(planned, list) else [] if planned is None else [planned]:
                rows.append({"destination": destination, "kind": kind, "identity": identity,
                             "payload": self.payload_path(kind, identity)})
        if documents:
            result = replace(result, documents=documents)
        return result, rows

    def render(self, journal: Journal, study_uid: str, kind: str, identity: str) -> Path:
        """The payload file of an outbox row, built from the journal if it is not on disk yet."""
        path = self.settings.data_dir / self.payload_path(kind, identity)
        if path.exists():
            return path
        result = journaled_result(journal, study_uid)
        created_at = journal.result_created_at(study_uid)
        source = self.sources.get(journal, self.settings.data_dir, study_uid)
        if result is None or created_at is None or source is None:
            raise OutputSuperseded("the study's result or its images are no longer in the journal")
        built_identity, payload = build_output(kind, source, result, created_at, self.settings, identity)
        if built_identity != identity:
            raise OutputSuperseded("the study was processed again with a different result; "
                                   "its new outputs are queued separately")
        write_atomic(path, payload, self.settings.node.fsync)
        return path


__all__ = ["HL7_DESTINATION", "NotApplicable", "OutputPreparer", "OutputSuperseded", "build_output",
           "journaled_result", "planned_document", "planned_identity", "selected_paths", "selected_sources",
           "SourceCache"]

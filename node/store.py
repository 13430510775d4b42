"""Accepting a received instance: check, de-duplicate, place on disk, journal, answer.

The order is what makes "success" trustworthy: the file is fsynced and atomically renamed
into the spool, and its journal row committed, before the C-STORE status goes back. A crash
at any point before that leaves the sender without a success, so it sends again; a crash
after it leaves a durable, journalled instance.

Layout under ``data_dir``: ``spool/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (a
different-content duplicate gets ``.dupN``), ``spool/.incoming/`` for transfers in progress,
``quarantine/<YYYYMMDDTHHMMSS>-<8 hex>.dcm`` with a ``.json`` beside it (the reason) for refused input.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.fsutil import fsync_dir
from node.assembly import Assembler
from node.config import Settings
from node.dicom.inspect import (
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    InspectedInstance,
    InstanceProblem,
    inspect_instance,
)
from node.journal import Journal
from node.logref import study_ref
from node.views import ViewInfo, identify_view

log = logging.getLogger("mammo_node.store")

STATUS_SUCCESS = 0x0000
# PS3.4 has no "duplicate" warning; B000 (coercion) is the closest warning class, and the
# Error Comment says what happened. Documented in the conformance statement.
STATUS_WARNING_DUPLICATE = 0xB000


@dataclass(frozen=True)
class StoreResult:
    """What to answer the sender."""

    status: int
    comment: str | None = None
    instance_id: int | None = None
    study_uid: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _ranking_facts(inspected: InspectedInstance) -> dict[str, Any]:
    """Header facts the view selection ranks on (see node.selection)."""
    ds = inspected.dataset
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    acquired = str(ds.get("AcquisitionDateTime", "") or "") or (
        str(ds.get("AcquisitionDate", "") or ds.get("ContentDate", "") or "")
        + str(ds.get("AcquisitionTime", "") or ds.get("ContentTime", "") or "")
    )
    try:
        instance_number = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        instance_number = 0
    return {
        "primary": image_type[:2] == ["ORIGINAL", "PRIMARY"] if image_type else True,
        "acquired": acquired,
        "instance_number": instance_number,
    }


class InstanceStore:
    """The receive path's storage side; thread-safe (one call per C-STORE)."""

    def __init__(self, settings: Settings, journal: Journal, assembler: Assembler) -> None:
        self.settings = settings
        self.journal = journal
        self.assembler = assembler
        self.data_dir = settings.data_dir
        self.spool = settings.spool_dir
        self.incoming = settings.incoming_dir
        self.quarantine_dir = settings.quarantine_dir
        for path in (self.spool, self.incoming, self.quarantine_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.fsync = settings.node.fsync
        self.min_free_bytes = settings.node.min_free_mb * 1024 * 1024
        self.max_inflated = settings.dicom.max_inflated_mb * 1024 * 1024
        self.decode_families = frozenset(settings.dicom.decode_first_frame)
        self.view_conflicts = settings.assembly.view_conflicts

    def clear_incoming(self) -> int:
        """Delete transfers a crash interrupted; their senders never got a success."""
        removed = 0
        for path in self.incoming.glob("*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d interrupted transfer(s) from %s", removed, self.incoming)
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def accept(
        self,
        incoming: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        calling_aet: str | None = None,
        peer_host: str | None = None,
        association: str | None = None,
    ) -> StoreResult:
        """Take ownership of the Part 10 file at ``incoming`` and return the status to answer.

        ``association`` identifies the association that delivered it (node.assembly closes a study
        early when that association, having sent the whole study, is released)."""
        if self.free_bytes() < self.min_free_bytes:
            incoming.unlink(missing_ok=True)
            log.warning("refused an instance from %s@%s: free space below node.min_free_mb", calling_aet, peer_host)
            return StoreResult(STATUS_OUT_OF_RESOURCES, "node is low on disk space; try again later")
        try:
            inspected = inspect_instance(incoming, sop_class_uid, sop_instance_uid, self.max_inflated,
                                         self.decode_families)
        except InstanceProblem as problem:
            self.quarantine(incoming, problem.status, problem.reason, calling_aet, peer_host,
                            sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid)
            return StoreResult(problem.status, problem.reason)
        view = identify_view(inspected.dataset)
        if view.conflicts and self.view_conflicts == "refuse":
            reason = "conflicting view attributes: " + "; ".join(view.conflicts)
            self.quarantine(incoming, STATUS_DATASET_MISMATCH, reason, calling_aet, peer_host,
                            sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                            study_uid=inspected.study_uid)
            return StoreResult(STATUS_DATASET_MISMATCH, reason)
        try:
            return self._place(incoming, inspected, view, calling_aet, peer_host, association)
        except Exception as exc:  # disk or journal failure: refuse, keep the bytes for inspection
            log.exception("could not store an instance")
            self.quarantine(incoming, STATUS_PROCESSING_FAILURE, f"internal error while storing: {exc}",
                            calling_aet, peer_host, sop_class_uid=sop_class_uid,
                            sop_instance_uid=sop_instance_uid, study_uid=inspected.study_uid)
            return StoreResult(STATUS_PROCESSING_FAILURE, "internal error while storing; see node log")

    def _place(self, incoming: Path, inspected: InspectedInstance, view: ViewInfo, calling_aet: str | None,
               peer_host: str | None, association: str | None = None) -> StoreResult:
        view_json = view.to_json() | {"label": view.label} | _ranking_facts(inspected)
        size = incoming.stat().st_size
        if self.fsync:
            with open(incoming, "rb") as fh:
                os.fdatasync(fh.fileno())
        study_dir = self.spool / inspected.study_uid
        study_dir.mkdir(exist_ok=True)
        ds = inspected.dataset
        study_attrs = {
            "patient_id": str(ds.get("PatientID", "") or "") or None,
            "patient_name": str(ds.get("PatientName", "") or "") or None,
            "accession_number": str(ds.get("AccessionNumber", "") or "") or None,
        }
        status, comment, sha = STATUS_SUCCESS, None, None
        with self.journal.transaction() as db:
            earlier = db.execute(
                "SELECT id, sha256, path, size FROM instances WHERE sop_instance_uid = ? ORDER BY id",
                (inspected.sop_instance_uid,),
            ).fetchall()
            # Content hashes are computed only here, when a SOP Instance UID comes again: the
            # common path pays nothing for duplicate detection.
            if earlier:
                sha = _sha256(incoming)
                for row in earlier:
                    if row["sha256"] is None and row["size"] == size:
                        row_sha = _sha256(self.data_dir / row["path"])
                        db.execute("UPDATE instances SET sha256 = ? WHERE id = ?", (row_sha, row["id"]))
                    else:
                        row_sha = row["sha256"]
                    if row_sha == sha:
                        incoming.unlink(missing_ok=True)
                        log.info("duplicate of an instance already stored (identical content) from %s@%s; "
                                 "ignored", calling_aet, peer_host)
                        return StoreResult(STATUS_SUCCESS, None, int(row["id"]), inspected.study_uid)
            name = inspected.sop_instance_uid + (f".dup{len(earlier)}" if earlier else "") + ".dcm"
            target = study_dir / name
            os.replace(incoming, target)
            if self.fsync:
                fsync_dir(study_dir)
            duplicate_of = int(earlier[0]["id"]) if earlier else None
            instance = {
                "sop_instance_uid": inspected.sop_instance_uid,
                "sop_class_uid": inspected.sop_class_uid,
                "study_uid": inspected.study_uid,
                "series_uid": inspected.series_uid,
                "transfer_syntax": inspected.transfer_syntax,
                "path": str(target.relative_to(self.data_dir)),
                "sha256": sha,
                "size": size,
                "calling_aet": calling_aet,
                "peer_host": peer_host,
                "received_at": time.time(),
                "position": view.position if duplicate_of is None else None,
                "view": view_json,
                "duplicate_of": duplicate_of,
            }
            instance_id = self.assembler.admit(db, instance, study_attrs, association)
        if duplicate_of is not None:
            status = STATUS_WARNING_DUPLICATE
            comment = "duplicate SOP Instance UID with different content; kept beside the first"
            log.warning("study %s: duplicate SOP Instance UID with different content from %s@%s; kept as %s",
                        study_ref(inspected.study_uid), calling_aet, peer_host, name)
        log.info("study %s: stored %s (%d bytes) from %s@%s", study_ref(inspected.study_uid), view.label,
                 size, calling_aet, peer_host)
        self.assembler.arrived(inspected.study_uid)
        return StoreResult(status, comment, instance_id, inspected.study_uid)

    def quarantine(self, path: Path, status: int, reason: str, calling_aet: str | None, peer_host: str | None,
                   **identifiers: str | None) -> Path | None:
        """Move refused input out of the way with its reason, journalled; never raises."""
        try:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            target = self.quarantine_dir / f"{stamp}-{os.urandom(4).hex()}.dcm"
            if path.exists():
                os.replace(path, target)
            else:
                target = None  # type: ignore[assignment]
            record = {"reason": reason, "status": status, "calling_aet": calling_aet, "peer_host": peer_host,
                      **identifiers}
            if target is not None:
                target.with_suffix(".json").write_text(json.dumps(record | {"at": stamp}, indent=2))
            self.journal.record_quarantine(
                reason=reason, status=status,
                path=str(target.relative_to(self.data_dir)) if target is not None else None,
                calling_aet=calling_aet, peer_host=peer_host,
                sop_class_uid=identifiers.get("sop_class_uid"),
                sop_instance_uid=identifiers.get("sop_instance_uid"),
                study_uid=identifiers.get("study_uid"),
            )
            log.warning("quarantined input from %s@%s (status 0x%04X): %s", calling_aet, peer_host, status, reason)
            return target
        except Exception:
            log.exception("could not quarantine input from %s@%s", calling_aet, peer_host)
            return None

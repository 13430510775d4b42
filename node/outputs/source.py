"""What the output encoders need to know about the source study, read once from the stored images.

The SRs reference the images the models saw (image library, evidence), copy the patient and
study modules, and HL7 fills PID/OBR from the same attributes. Only headers are read
(``stop_before_pixels``), so building outputs never touches pixel data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pydicom
from pydicom.dataset import Dataset
import uuid

from node.views import POSITIONS

# Patient and general study attributes copied into every SR (PS3.3 C.7.1.1, C.7.2.1, C.7.1.4 subset).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "IssuerOfAccessionNumberSequence", "ProcedureCodeSequence",
)


@dataclass(frozen=True)
class SourceImage:
    """One image the models saw."""

    position: str  # "R-CC", "R-MLO", "L-CC", "L-MLO"
    dataset: Dataset  # header only

    @property
    def laterality(self) -> str:
        return self.position.split("-")[0]

    @property
    def view(self) -> str:
        return self.position.split("-")[1]

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)


@dataclass(frozen=True)
class SourceStudy:
    """The source study of a result: its images in the fixed order R-CC, R-MLO, L-CC, L-MLO."""

    study_uid: str
    images: tuple[SourceImage, ...]

    @property
    def header(self) -> Dataset:
        """The first image's header: patient and study attributes are the same in every image."""
        return self.images[0].dataset

    def patient_study_attributes(self) -> Dataset:
        out = Dataset()
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in self.header:
                setattr(out, keyword, self.header[keyword].value)
        return out

    def evidence(self) -> list[Dataset]:
        """Current Requested Procedure Evidence: the source images, by series (viewers need it)."""
        series: dict[str, list[Dataset]] = {}
        for image in self.images:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.sop_class_uid, image.sop_instance_uid
            series.setdefault(image.series_instance_uid, []).append(ref)
        study = Dataset()
        study.StudyInstanceUID = self.study_uid
        study.ReferencedSeriesSequence = []
        for uid, refs in series.items():
            item = Dataset()
            item.SeriesInstanceUID = uid
            item.ReferencedSOPSequence = refs
            study.ReferencedSeriesSequence.append(item)
        return [study]

    def get(self, keyword: str, default: Any = "") -> Any:
        value = self.header.get(keyword, default)
        return default if value is None else value

    @classmethod
    def from_files(cls, paths: dict[str, Path]) -> "SourceStudy":
        """``{position: path}`` of the selected images (any subset of the four positions)."""
        images = []
        for position in POSITIONS:
            if position in paths:
                ds = pydicom.dcmread(paths[position], stop_before_pixels=True)
                images.append(SourceImage(position, ds))
        if not images:
            raise ValueError("a result needs at least one source image")
        return cls(str(images[0].dataset.StudyInstanceUID), tuple(images))


def result_fingerprint(study_uid: str, models: dict[str, str], result: dict[str, Any]) -> str:
    """A short stable digest of what a result says: outputs derived from it (UIDs, HL7 control
    IDs) are equal for an identical resend and differ when a reprocessing changed the result."""
    import json

    text = json.dumps({"study": study_uid, "models": models,
                       "breasts": result.get("breasts"), "report": result.get("report")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_uid(*parts: Iterable[str] | str) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) from the given strings: the same inputs always give
    the same UID, so a resent SR replaces itself in the PACS instead of piling up copies."""
    flat: list[str] = []
    for part in parts:
        flat.extend([part] if isinstance(part, str) else list(part))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(flat)).int}"


# A fixed namespace for our name-based (version 5) UUIDs; 2.25.<uuid as integer> is a valid UID.
_UID_NAMESPACE = uuid.UUID("6d616d6d-6f2d-4e6f-8465-2d7569647321")


@dataclass(frozen=True)
class OutputIdentity:
    """The UIDs of one output object: a series per (study, kind, model versions) and an instance per
    result content, so an identical resend carries the same UIDs (PACS de-duplicates it) while a
    result produced by other models or changed by reprocessing is a new object."""

    series_instance_uid: str
    sop_instance_uid: str
    fingerprint: str


def output_identity(study_uid: str, result: dict[str, Any], kind: str) -> OutputIdentity:
    models = dict(result.get("models", {}))
    fingerprint = result_fingerprint(study_uid, models, result)
    versions = [f"{k}={v}" for k, v in sorted(models.items())]
    return OutputIdentity(derived_uid("series", study_uid, kind, versions),
                          derived_uid("instance", study_uid, kind, fingerprint), fingerprint)

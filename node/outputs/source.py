"""What the output encoders need to know about the source study, read once from the stored images.

The SRs reference the images the models saw (image library, evidence), copy the patient and
study modules, and HL7 fills PID/OBR from the same attributes. Only headers are read
(``stop_before_pixels``), so building outputs never touches pixel data.
"""
from __future__ import annotations

import hashlib
import json
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import pydicom
from pydicom.dataset import Dataset
import uuid

from node.views import POSITIONS

# The Patient (PS3.3 C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) modules, copied
# whole into every SR: every attribute the source images have (other patient IDs, issuers, the
# referring physician's identification, ...). Type 2 attributes the source lacks are written empty.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "QualityControlSubject", "ReferencedPatientPhotoSequence", "ReferencedPatientSequence",
    "OtherPatientIDsSequence", "OtherPatientIDs", "OtherPatientNames", "EthnicGroup", "EthnicGroupCodeSequence",
    "PatientComments", "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "StrainDescription", "StrainNomenclature",
    "StrainCodeSequence", "StrainAdditionalInformation", "StrainStockSequence", "GeneticModificationsSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence",
)
GENERAL_STUDY_KEYWORDS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence", "ReferencedStudySequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
)
PATIENT_STUDY_MODULE_KEYWORDS = (
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "MedicalAlerts", "Allergies", "Occupation", "SmokingStatus",
    "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate", "PatientSexNeutered",
    "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PatientState",
)
PATIENT_STUDY_KEYWORDS = PATIENT_KEYWORDS + GENERAL_STUDY_KEYWORDS + PATIENT_STUDY_MODULE_KEYWORDS
# Type 2 attributes of those modules: present, empty when the source has none.
PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class SourceImage:
    """One image the models saw."""

    position: str  # "R-CC", "R-MLO", "L-CC", "L-MLO"
    dataset: Dataset  # header only
    path: Path | None = None  # the stored file, for the outputs that need its pixels (heatmap_sc)

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
        """The Patient, General Study and Patient Study modules of the source, type 2 attributes
        present (empty when the source lacks them)."""
        out = Dataset()
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in self.header:
                out.add(deepcopy(self.header[keyword]))
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in out:
                setattr(out, keyword, "")
        out.StudyInstanceUID = self.study_uid
        return out

    def referenced_requests(self) -> list[Dataset]:
        """SR Document General's Referenced Request Sequence (PS3.3 C.17.2): one item per request
        of the source's Request Attributes Sequence, or one from the header's own order numbers;
        none when the source names no request (no accession number, no order, no requested
        procedure)."""
        requests = list(self.header.get("RequestAttributesSequence", None) or [])
        keys = ("AccessionNumber", "PlacerOrderNumberImagingServiceRequest",
                "FillerOrderNumberImagingServiceRequest", "RequestedProcedureID")
        if not requests:
            if not any(str(self.header.get(k, "") or "").strip() for k in keys):
                return []
            requests = [self.header]
        out = []
        for request in requests:
            item = Dataset()
            item.StudyInstanceUID = self.study_uid
            item.ReferencedStudySequence = []
            for keyword in ("AccessionNumber", "IssuerOfAccessionNumberSequence",
                            "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
                            "RequestedProcedureID", "RequestedProcedureDescription",
                            "RequestedProcedureCodeSequence"):
                element = request.get(keyword) if keyword in request else self.header.get(keyword)
                if element is not None:
                    setattr(item, keyword, deepcopy(element.value if hasattr(element, "value") else element))
            for keyword in ("AccessionNumber", "PlacerOrderNumberImagingServiceRequest",
                            "FillerOrderNumberImagingServiceRequest", "RequestedProcedureID",
                            "RequestedProcedureDescription"):
                if keyword not in item:
                    setattr(item, keyword, "")  # type 2
            if "RequestedProcedureCodeSequence" not in item:
                item.RequestedProcedureCodeSequence = []
            out.append(item)
        return out

    @property
    def timezone_offset(self) -> str | None:
        """The source's Timezone Offset From UTC ("+0100"), None when it has none or a bad one."""
        value = str(self.header.get("TimezoneOffsetFromUTC", "") or "").strip()
        if len(value) == 5 and value[0] in "+-" and value[1:].isdigit() and int(value[3:]) < 60:
            return value
        return None

    def header_digest(self) -> str:
        """A digest of every header attribute of the source images (what the SRs copy from them)."""
        digest = hashlib.sha256()
        for image in self.images:
            digest.update(image.position.encode())
            for element in image.dataset.iterall():
                if element.VR == "SQ":
                    digest.update(f"{element.tag}:SQ:{len(element.value)}".encode())
                    continue
                value = element.value
                digest.update(f"{element.tag}:{element.VR}:".encode())
                digest.update(value if isinstance(value, bytes) else repr(value).encode())
        return digest.hexdigest()

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
                images.append(SourceImage(position, ds, Path(paths[position])))
        if not images:
            raise ValueError("a result needs at least one source image")
        return cls(str(images[0].dataset.StudyInstanceUID), tuple(images))


def result_fingerprint(study_uid: str, models: dict[str, str], result: dict[str, Any]) -> str:
    """A short stable digest of what a result says (HL7 control IDs derive from it; the SRs use
    :func:`document_identity`, which covers everything their bytes depend on)."""
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
    """The identity from the result alone: what HL7 control IDs derive from, and what the SRs of
    results journaled before document_identity existed were named by (node.outputs.amend)."""
    models = dict(result.get("models", {}))
    fingerprint = result_fingerprint(study_uid, models, result)
    versions = [f"{k}={v}" for k, v in sorted(models.items())]
    return OutputIdentity(derived_uid("series", study_uid, kind, versions),
                          derived_uid("instance", study_uid, kind, fingerprint), fingerprint)


@dataclass(frozen=True)
class Stamp:
    """The SR's own date and time (content, series, instance creation) and the offset they are in."""

    date: str  # YYYYMMDD
    time: str  # HHMMSS
    offset: str | None  # "+0100", or None: local time of the node, no Timezone Offset From UTC written

    @property
    def datetime(self) -> str:
        return self.date + self.time


def stamp(created_at: float, source: SourceStudy) -> Stamp:
    """``created_at`` in the time zone of the source images: in their Timezone Offset From UTC when
    they have one (the SR then carries the same offset, which applies to the study date and time it
    copies too), else in the node's local time with no offset written, as the source's own times
    are (PS3.3 C.12.1.1.8: one offset for every date and time of the instance)."""
    offset = source.timezone_offset
    if offset is None:
        when = datetime.fromtimestamp(created_at)  # the node's local time, as the modality's clock
    else:
        minutes = (int(offset[1:3]) * 60 + int(offset[3:5])) * (1 if offset[0] == "+" else -1)
        when = datetime.fromtimestamp(created_at, tz=timezone(timedelta(minutes=minutes)))
    return Stamp(when.strftime("%Y%m%d"), when.strftime("%H%M%S"), offset)


# What of the result an SR shows (the rest, e.g. processing seconds, never reaches its bytes).
_DOCUMENT_RESULT_KEYS = ("status", "missing_views", "breasts", "disagreements", "report", "models",
                         "replaces", "preliminary")
# CAD marks (node.marks) and whether localisation was attempted: part of the identity only when the
# result has them, so results journaled before they existed keep the UIDs they were planned with.
_OPTIONAL_RESULT_KEYS = ("localization", "marks")


def document_identity(source: SourceStudy, result: dict[str, Any], kind: str, created_at: float,
                      *, device_uid: str, extra: Iterable[str] = ()) -> OutputIdentity:
    """The UIDs of one SR: the series per (study, kind, model versions); the instance from
    everything its bytes depend on: the result as shown, the source images and their headers, the
    creation stamp, the node's software version and device UID, and ``extra`` (the writer's own
    choices, e.g. the SOP class). Same content, same UID (a resend replaces itself in the PACS);
    different content, a different UID (a PACS never sees two versions under one UID)."""
    from node.outputs.common import SOFTWARE_VERSION

    models = dict(result.get("models", {}))
    when = stamp(created_at, source)
    text = json.dumps({
        "study": source.study_uid, "kind": kind,
        "result": {**{key: result.get(key) for key in _DOCUMENT_RESULT_KEYS},
                   **{key: result[key] for key in _OPTIONAL_RESULT_KEYS if key in result}},
        "images": [[i.position, i.sop_class_uid, i.series_instance_uid, i.sop_instance_uid] for i in source.images],
        "headers": source.header_digest(), "stamp": [when.datetime, when.offset],
        "software": SOFTWARE_VERSION, "device": device_uid, "extra": list(extra),
    }, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:32]
    versions = [f"{k}={v}" for k, v in sorted(models.items())]
    return OutputIdentity(derived_uid("series", source.study_uid, kind, versions),
                          derived_uid("instance", source.study_uid, kind, fingerprint), fingerprint)

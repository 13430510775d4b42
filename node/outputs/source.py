"""What the output encoders need to know about the source study, read once from the stored images.

The SRs reference the images the models saw (image library, evidence), copy the patient and
study modules, and HL7 fills PID/OBR from the same attributes. Only headers are read
(``stop_before_pixels``), so building outputs never touches pixel data.
"""
from __future__ import annotations

import hashlib
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

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

"""Phantom DICOM writing: Digital Mammography X-Ray Image IOD datasets and their encodings.

One function builds a complete dataset (all mandatory modules of the Digital Mammography
X-Ray Image IOD, PS3.3 A.26) from a rendered float image, one encodes it in the requested
transfer syntax. Codes come from pydicom's code dictionary (CID 4014 views, CID 4015 view
modifiers, SCT breast) so they cannot drift from the standard's tables.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from phantoms.anatomy import PATIENT_ORIENTATION, PixelGrid

MAMMO_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
MAMMO_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}
_COMPRESSED = {"jpeg-ls", "jpeg2000", "rle"}

VIEW_CODES: dict[str, Code] = {
    "CC": codes.cid4014.CranioCaudal,
    "MLO": codes.cid4014.MedioLateralObliqueProjection,
    "XCCL": codes.cid4014.CranioCaudalExaggeratedLaterally,
}
VIEW_MODIFIER_CODES: dict[str, Code] = {
    "spot_compression": codes.cid4015.SpotCompression,
    "magnification": codes.cid4015.Magnification,
}
BREAST = codes.SCT.Breast

_UID_ROOT = "mammo-node phantom v1"   # the UID naming scheme; the phantom version enters via content_key
MANUFACTURER = "mammo-node"
MODEL_NAME = "mammo-node phantom"


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mammo-node:phantom")


def phantom_uid(*parts: object) -> UID:
    """Deterministic UUID-derived UID (PS3.5 B.2) from the given parts: same parts, same UID.

    Not ``generate_uid``: with ``prefix=None`` it ignores ``entropy_srcs`` (random uuid4),
    and with prefix "2.25." it appends a 59-digit hash, which is not a UUID under 2.25.
    """
    name = "|".join([_UID_ROOT, *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


@dataclass(frozen=True)
class StudyInfo:
    """Patient/study/series attributes shared by every image of one phantom study."""

    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_id: str
    study_date: str
    study_time: str
    birth_date: str
    age_years: int
    software_version: str         # "phantom-<PHANTOM_VERSION>"


@dataclass(frozen=True)
class ImageInfo:
    """Per-image attributes: which breast and view, and the acquisition geometry."""

    laterality: str
    view: str                     # "CC" | "MLO" | "XCCL"
    sop_uid: str
    instance_number: int
    thickness_mm: float
    compression_n: float
    angle_deg: float              # positioner primary angle (0 for CC, ~45 for MLO)
    modifiers: tuple[str, ...] = field(default_factory=tuple)
    kvp: float = 29.0
    mas: float = 120.0
    entrance_dose_mgy: float = 5.0
    glandular_dose_mgy: float = 1.5
    processing_twin_uid: str | None = None  # the For Processing instance this one is made from


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def quantize(image: np.ndarray, grid: PixelGrid, monochrome1: bool) -> np.ndarray:
    """Float [0,1] image (bright = dense) to unsigned stored values, inverted for MONOCHROME1."""
    maxv = grid.max_value
    scaled = image * np.float32(maxv)
    scaled += np.float32(0.5)
    stored = scaled.astype(np.uint16)            # C-contiguous even for a mirrored view
    if monochrome1:
        np.subtract(np.uint16(maxv), stored, out=stored)
    return stored


def build_dataset(
    stored: np.ndarray, grid: PixelGrid, study: StudyInfo, image: ImageInfo, *,
    monochrome1: bool = False, laterality_attr: str = "image", view_codes: bool = True,
    for_processing: bool = False,
) -> Dataset:
    """Complete uncompressed Digital Mammography X-Ray Image dataset with file meta."""
    sop_class = MAMMO_FOR_PROCESSING if for_processing else MAMMO_FOR_PRESENTATION
    maxv = grid.max_value
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = image.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_uid
    # General Study
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.AcquisitionTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = "MG"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Phantom Screening Centre"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MG SCREENING BILATERAL"
    ds.SeriesDescription = "PHANTOM SCREENING VIEWS"
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionAddress = "1 Phantom Way, Testville"
    ds.StationName = "PHANTOM-MG1"
    ds.OperatorsName = "PHANTOM^OPERATOR"
    # Patient
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{study.age_years:03d}Y"
    # Equipment / acquisition
    ds.BodyPartExamined = "BREAST"
    ds.SoftwareVersions = study.software_version
    ds.DeviceSerialNumber = "PHANTOM-0001"
    ds.BodyPartThickness = f"{image.thickness_mm:.1f}"
    ds.CompressionForce = f"{image.compression_n:.1f}"
    ds.KVP = f"{image.kvp:.0f}"
    ds.ExposureTime = f"{round(image.mas / 0.12):d}"      # ms at a 120 mA tube current
    ds.Exposure = f"{round(image.mas):d}"                  # mAs
    ds.RelativeXRayExposure = f"{round(image.mas * 4):d}"
    ds.AnodeTargetMaterial = "TUNGSTEN"
    ds.FilterMaterial = "RHODIUM"
    ds.EntranceDoseInmGy = f"{image.entrance_dose_mgy:.2f}"
    ds.OrganDose = f"{image.glandular_dose_mgy / 100.0:.5f}"   # dGy
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PHANTOMDET1"
    ds.DateOfLastDetectorCalibration = study.study_date
    ds.TimeOfLastDetectorCalibration = "070000"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.PositionerPrimaryAngle = f"{image.angle_deg:.1f}"
    ds.ViewPosition = image.view
    ds.ImagerPixelSpacing = [f"{grid.spacing_mm:g}", f"{grid.spacing_mm:g}"]
    ds.EstimatedRadiographicMagnificationFactor = "1.0"
    # General Series / Study identification
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = image.instance_number
    ds.PatientOrientation = list(PATIENT_ORIENTATION[(image.laterality, image.view)])
    if laterality_attr == "series":
        ds.Laterality = image.laterality
    else:
        ds.ImageLaterality = image.laterality
    ds.BurnedInAnnotation = "NO"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = grid.bits_stored
    ds.HighBit = grid.bits_stored - 1
    ds.PixelRepresentation = 0
    # Nothing is padding (the background carries noise well above 0); declared because
    # IHE Mammography Image requires it: black for the display, i.e. max value in MONOCHROME1.
    ds.PixelPaddingValue = maxv if monochrome1 else 0
    # VOI LUT: a window spanning the tissue range of the stored values.
    if not for_processing:
        center = round(0.45 * maxv)
        # MONOCHROME1: the exact mirror under DICOM's LINEAR window (centre c - 0.5) is max - c + 1,
        # so both photometric interpretations display (and preprocess) identically.
        ds.WindowCenter = str(maxv - center + 1 if monochrome1 else center)
        ds.WindowWidth = f"{0.9 * maxv:.0f}"
        ds.WindowCenterWidthExplanation = "STANDARD"
        ds.VOILUTFunction = "LINEAR"
    # DX Image
    ds.PixelIntensityRelationship = "LOG"
    # -1: higher stored values mean less X-ray intensity (more attenuation), as in M2 here.
    ds.PixelIntensityRelationshipSign = 1 if monochrome1 else -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    # Mammography Image / DX Anatomy Imaged
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.AnatomicRegionSequence = DicomSequence([_code_item(BREAST)])
    if view_codes:
        view = _code_item(VIEW_CODES[image.view])
        view.ViewModifierCodeSequence = DicomSequence([_code_item(VIEW_MODIFIER_CODES[m]) for m in image.modifiers])
        ds.ViewCodeSequence = DicomSequence([view])
    if image.processing_twin_uid and not for_processing:
        ref = Dataset()
        ref.ReferencedSOPClassUID = MAMMO_FOR_PROCESSING
        ref.ReferencedSOPInstanceUID = image.processing_twin_uid
        ref.SpatialLocationsPreserved = "YES"
        ds.SourceImageSequence = DicomSequence([ref])
    # Acquisition Context
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode ``ds`` in place in one of TRANSFER_SYNTAXES (all lossless)."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; one of {sorted(TRANSFER_SYNTAXES)}")
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if transfer_syntax in _COMPRESSED:
        ds.compress(uid, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    return ds

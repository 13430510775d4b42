"""The lesion map burnt into a copy of each source image: a Secondary Capture, derived, not for diagnosis.

Why: some PACS and viewers show neither SR marks nor presentation states, but every one shows an
image. For those, ``[[outputs.dicom]] reports = [..., "heatmap_sc"]`` sends one Secondary Capture
(SOP class 1.2.840.10008.5.1.4.1.1.7, built with highdicom) per source image of a result whose
VersaMammo package has a lesion map: the source image, windowed as its own header says and
downsampled to at most MAX_SIDE pixels on its long side, with the lesion map drawn over it
(bilinear over the feature grid, mapped back through the inverse of the model's crop, mirror and
resize, so a hot region lies on the breast where the model looked), the CAD marks' rectangles and
scores, and two lines of text burnt into the pixels: "AI HEATMAP - DERIVED - NOT FOR DIAGNOSIS"
and the model and threshold.

It is labelled as what it is in every way a PACS shows: Image Type DERIVED\\SECONDARY, Burned In
Annotation YES, Conversion Type WSD (workstation), Series Description "AI HEATMAP - NOT FOR
DIAGNOSIS", a Derivation Description, and the Source Image Sequence naming the image it was made
from; Modality OT, so no hanging protocol takes it for a mammogram. In the source study, its own
series. Identities follow the other outputs' rule (node.outputs.source.document_identity, with the
image's position and its lesion map as extras): same content, same UID.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from models.preprocess.geometry import ModelGeometry
from node.outputs.common import DEVICE_NAME, MANUFACTURER, SOFTWARE_VERSION, NotApplicable, model_label
from node.outputs.source import SourceImage, SourceStudy, stamp
from node.outputs.identity import document_identity
from node.study_result import CadMark, LesionMap, StudyResult

KIND = "heatmap_sc"
SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SERIES_NUMBER = 9504
SERIES_DESCRIPTION = "AI HEATMAP - NOT FOR DIAGNOSIS"
HEADER = "AI HEATMAP - DERIVED - NOT FOR DIAGNOSIS"
DERIVATION = ("AI lesion-map heatmap and CAD marks burnt into a downsampled copy of the source image; "
              "derived, preliminary, not for diagnosis")
MAX_SIDE = 1024          # long side of the SC in pixels (never upsampled)
ALPHA = 0.6              # opacity of the heat at probability 1 (linear in the probability)
MIN_SHOWN = 0.05         # probabilities below this are not drawn
MARK_COLOR = (0, 255, 255)


def _applies(result: StudyResult) -> Mapping[str, LesionMap]:
    maps = result.lesion_maps
    if not result.localization_attempted or not maps:
        raise NotApplicable("the VersaMammo package gives no lesion map: no heatmap secondary capture")
    return maps


def _identity(source: SourceStudy, result: StudyResult, created_at: float, device_uid: str,
              image: SourceImage) -> tuple[str, str]:
    heat_map = (result.lesion_maps or {}).get(image.position)
    heat = json.dumps(None if heat_map is None else heat_map.to_json(), sort_keys=True)
    ident = document_identity(source, result, KIND, created_at, device_uid=device_uid,
                              extra=[SOP_CLASS_UID, image.position, heat])
    return ident.series_instance_uid, ident.sop_instance_uid


def planned_captures(source: SourceStudy, result: StudyResult, created_at: float,
                     device_uid: str) -> list[tuple[str, str]]:
    """(position, SOP Instance UID) of each secondary capture (images with a lesion map), unbuilt."""
    maps = _applies(result)
    return [(image.position, _identity(source, result, created_at, device_uid, image)[1])
            for image in source.images if image.position in maps]


# ---------------------------------------------------------------------------- pixels
def display_image(ds: Dataset) -> np.ndarray:
    """The source image as a viewer shows it by default: modality LUT, its first window (else the
    full range), MONOCHROME1 inverted; uint8, white = dense."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        pixels = apply_voi_lut(pixels, ds, index=0).astype(np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    out = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 1.0 - out
    return np.round(out * 255).astype(np.uint8)


def heat_on_source(heat: LesionMap, shape: tuple[int, int], scale: float) -> np.ndarray:
    """The lesion map at every pixel of a ``shape`` (rows, cols) image that is the source image
    scaled by ``scale``: bilinear over the grid's cell centres, through the model geometry; 0 outside
    the model image."""
    prob = np.asarray(heat.map, dtype=np.float64)
    geometry = ModelGeometry(**heat.geometry)
    rows, cols = heat.model_size
    g_rows, g_cols = prob.shape
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    mx, my = geometry.to_model((xs + 0.5) / scale, (ys + 0.5) / scale)
    inside = (mx >= 0) & (mx < cols) & (my >= 0) & (my < rows)
    gx = np.clip(mx / (cols / g_cols) - 0.5, 0, g_cols - 1)
    gy = np.clip(my / (rows / g_rows) - 0.5, 0, g_rows - 1)
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    x1, y1 = np.minimum(x0 + 1, g_cols - 1), np.minimum(y0 + 1, g_rows - 1)
    fx, fy = gx - x0, gy - y0
    value = (prob[y0, x0] * (1 - fx) * (1 - fy) + prob[y0, x1] * fx * (1 - fy)
             + prob[y1, x0] * (1 - fx) * fy + prob[y1, x1] * fx * fy)
    return np.where(inside, value, 0.0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(image: np.ndarray, heat: LesionMap, marks: list[CadMark], lines: list[str]) -> np.ndarray:
    """RGB uint8: ``image`` (uint8 source pixels) downsampled, heat, marks and ``lines`` burnt in."""
    from PIL import Image, ImageDraw

    rows, cols = image.shape
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    scale_x, scale_y = size[0] / cols, size[1] / rows
    base = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX), dtype=np.float64)
    prob = heat_on_source(heat, (size[1], size[0]), scale_x)
    alpha = np.where(prob >= MIN_SHOWN, ALPHA * np.clip(prob, 0, 1), 0.0)[..., None]
    colour = np.stack([np.full_like(prob, 255.0), 255.0 * (1 - np.clip(prob, 0, 1)), np.zeros_like(prob)], -1)
    rgb = base[..., None] * (1 - alpha) + colour * alpha
    canvas = Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    text_size = max(10, size[1] // 40)
    font = _font(text_size)
    for mark in marks:
        x0, y0, x1, y1 = (float(v) for v in mark.box)
        box = (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)
        draw.rectangle(box, outline=MARK_COLOR, width=max(1, text_size // 8))
        label = f"{mark.kind} {float(mark.score):.2f}"
        top = box[1] - text_size - 2 if box[1] - text_size - 2 >= 0 else box[3] + 2
        draw.text((box[0], top), label, fill=MARK_COLOR, font=font)
    y = 2
    for line in lines:
        left, top, right, bottom = draw.textbbox((2, y), line, font=font)
        draw.rectangle((0, y, right + 2, bottom + 2), fill=(0, 0, 0))
        draw.text((2, y), line, fill=(255, 255, 255), font=font)
        y = bottom + 3
    return np.asarray(canvas, dtype=np.uint8)


# ---------------------------------------------------------------------------- the instance
def build_secondary_capture(source: SourceStudy, result: StudyResult, *, created_at: float, device_uid: str,
                            identity: str) -> Dataset:
    """The secondary capture planned as ``identity`` (a SOP Instance UID from planned_captures);
    LookupError when none of this result has it (the result changed since it was planned)."""
    maps = _applies(result)
    for number, image in enumerate(source.images, start=1):
        if image.position not in maps:
            continue
        series_uid, sop_uid = _identity(source, result, created_at, device_uid, image)
        if sop_uid != identity:
            continue
        if image.path is None:
            raise NotApplicable(f"{image.position}: the source image's pixels are not at hand")
        pixels = display_image(pydicom.dcmread(image.path))
        marks = result.marks_on(image.position)
        name, version = model_label(result.models, "versamammo")
        threshold = result.localization.mark_threshold if result.localization is not None else None
        lines = [HEADER, f"{name}@{version} lesion map; {len(marks)} CAD mark(s) at >= {threshold}"]
        rgb = render(pixels, maps[image.position], marks, lines)
        src = image.dataset
        sc = hd.sc.SCImage(
            pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            study_instance_uid=source.study_uid, series_instance_uid=series_uid, series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid, instance_number=number, manufacturer=MANUFACTURER,
            patient_id=str(source.get("PatientID")), patient_name=source.get("PatientName") or None,
            patient_birth_date=str(source.get("PatientBirthDate")) or None,
            patient_sex=str(source.get("PatientSex")) or None, accession_number=str(source.get("AccessionNumber")),
            study_id=str(source.get("StudyID")), study_date=str(source.get("StudyDate")) or None,
            study_time=str(source.get("StudyTime")) or None,
            referring_physician_name=source.get("ReferringPhysicianName") or None,
            laterality=image.laterality, patient_orientation=("A", "R"),
            transfer_syntax_uid=ExplicitVRLittleEndian)
        for element in source.patient_study_attributes():  # the whole modules, as the SRs copy them
            sc[element.tag] = element
        if "PatientOrientation" in src:  # the source's own (mammography values like "P\\FL")
            sc.PatientOrientation = src.PatientOrientation
        when = stamp(created_at, source)
        sc.SeriesDate = sc.ContentDate = sc.DateOfSecondaryCapture = sc.InstanceCreationDate = when.date
        sc.SeriesTime = sc.ContentTime = sc.TimeOfSecondaryCapture = sc.InstanceCreationTime = when.time
        if when.offset:
            sc.TimezoneOffsetFromUTC = when.offset
        sc.Modality = "OT"
        sc.ConversionType = "WSD"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES"
        sc.RecognizableVisualFeatures = "NO"
        sc.SeriesDescription = SERIES_DESCRIPTION
        sc.DerivationDescription = DERIVATION
        sc.ImageComments = f"{HEADER}. {DERIVATION}."[:10240]
        sc.ManufacturerModelName = DEVICE_NAME
        sc.SoftwareVersions = [SOFTWARE_VERSION, f"{name}@{version}"[:64]]
        sc.BodyPartExamined = "BREAST"
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.sop_class_uid
        ref.ReferencedSOPInstanceUID = image.sop_instance_uid
        sc.SourceImageSequence = [ref]
        for item in sc.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:  # highdicom stamps "now": the result's time instead
                item.ContributionDateTime = when.datetime + (when.offset or "")
        return sc
    raise LookupError(f"no secondary capture {identity} in this result")


def read_secondary_capture(ds: Dataset) -> dict[str, Any]:
    """What a receiver can tell of our capture without looking at it."""
    return {"sop_class_uid": str(ds.SOPClassUID), "image_type": list(ds.ImageType),
            "burned_in_annotation": str(ds.get("BurnedInAnnotation", "")),
            "series_description": str(ds.get("SeriesDescription", "")),
            "source": str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID),
            "shape": tuple(ds.pixel_array.shape)}


__all__ = ["KIND", "SOP_CLASS_UID", "build_secondary_capture", "display_image", "heat_on_source",
           "planned_captures", "read_secondary_capture", "render"]

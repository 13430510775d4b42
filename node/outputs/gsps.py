"""CAD marks for PACS that draw no SR marks: a Grayscale Softcopy Presentation State per source image.

Why: many PACS viewers ignore the SCOORDs of a CAD SR but apply a presentation state to the image
it references (the most widely displayable overlay: docs/dicom-sr.md). Each source image of a
result with localisation attempted gets one GSPS (SOP class 1.2.840.10008.5.1.4.1.1.11.1, built
with highdicom) in our own series, with a graphic layer "AI CAD MARKS" holding, per CAD mark
(node.marks), the region's rectangle and a point at its centre, a text "<kind> <score>" beside it,
and one line at the top-left corner that says what this is ("AI CAD marks, preliminary, not for
diagnosis: N"), so an image without marks still shows that the CAD ran. All coordinates are
PIXEL units of the source image. The image's own window (VOI LUT) and modality LUT are kept, so
applying the state changes nothing else of how the image looks.

Identities follow the SRs' rule (node.outputs.source.document_identity, with the image's position
as an extra): same content, same UID; planned before rendering like every output.
"""
from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.outputs.common import DEVICE_NAME, MANUFACTURER, SOFTWARE_VERSION, NotApplicable, model_label
from node.outputs.source import SourceImage, SourceStudy, stamp
from node.outputs.identity import derived_uid, document_identity
from node.study_result import CadMark, StudyResult

KIND = "gsps"
SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State Storage
SERIES_NUMBER = 9503
SERIES_DESCRIPTION = "AI CAD MARKS (PRELIMINARY)"
LAYER = "AI CAD MARKS"
LAYER_COLOR = hd.color.CIELabColor(60.0, 80.0, 60.0)  # orange-red on a grey image
HEADER = "AI CAD marks, preliminary, not for diagnosis"
_TEXT_HEIGHT = 0.03  # of the image height, for the text boxes


def _applies(result: StudyResult) -> None:
    if not result.localization_attempted:
        raise NotApplicable("the VersaMammo package gives no CAD marks (no lesion map): no presentation state")


def planned_states(source: SourceStudy, result: StudyResult, created_at: float,
                   device_uid: str) -> list[tuple[str, str]]:
    """(position, SOP Instance UID) of each presentation state, without building them."""
    _applies(result)
    return [(image.position, _identity(source, result, created_at, device_uid, image)[1]) for image in source.images]


def _identity(source: SourceStudy, result: StudyResult, created_at: float, device_uid: str,
              image: SourceImage) -> tuple[str, str]:
    ident = document_identity(source, result, KIND, created_at, device_uid=device_uid,
                              extra=[SOP_CLASS_UID, image.position])
    return ident.series_instance_uid, ident.sop_instance_uid


def _text_box(x: float, y: float, text: str, height: float) -> tuple[float, float, float, float]:
    """A bounding box (PIXEL) for ``text`` with its top-left corner at (x, y)."""
    return (x, y, x + 0.6 * height * len(text), y + height)


def _annotation(image: SourceImage, marks: list[CadMark], layer: hd.pr.GraphicLayer) -> hd.pr.GraphicAnnotation:
    rows, cols = int(image.dataset.Rows), int(image.dataset.Columns)
    height = max(8.0, _TEXT_HEIGHT * rows)
    header = f"{HEADER}: {len(marks)} mark{'s' if len(marks) != 1 else ''}"
    texts = [hd.pr.TextObject(header, hd.pr.AnnotationUnitsValues.PIXEL,
                              bounding_box=_clip_box(_text_box(2.0, 2.0, header, height), cols, rows),
                              text_justification=hd.pr.TextJustificationValues.LEFT)]
    graphics = []
    for mark in marks:
        x0, y0, x1, y1 = (float(v) for v in mark.box)
        graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE,
                                            np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]),
                                            hd.pr.AnnotationUnitsValues.PIXEL))
        graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, np.array([mark.center], dtype=float),
                                            hd.pr.AnnotationUnitsValues.PIXEL))
        label = f"{mark.kind} {float(mark.score):.2f}"
        top = y0 - height - 1 if y0 - height - 1 >= 0 else y1 + 1
        texts.append(hd.pr.TextObject(label, hd.pr.AnnotationUnitsValues.PIXEL,
                                      bounding_box=_clip_box(_text_box(x0, top, label, height), cols, rows),
                                      text_justification=hd.pr.TextJustificationValues.LEFT))
    return hd.pr.GraphicAnnotation(referenced_images=[image.dataset], graphic_layer=layer,
                                   graphic_objects=graphics or None, text_objects=texts)


def _clip_box(box: tuple[float, float, float, float], cols: int, rows: int) -> tuple[float, float, float, float]:
    """A text box inside the image (shifted left/up where it would run over the edge)."""
    x0, y0, x1, y1 = box
    dx, dy = min(0.0, cols - x1), min(0.0, rows - y1)
    return (max(0.0, x0 + dx), max(0.0, y0 + dy), min(float(cols), x1), min(float(rows), y1))


def _voi(image: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The image's first window, so the state displays the image as its own header says."""
    center, width = image.get("WindowCenter"), image.get("WindowWidth")
    if center is None or width is None:
        return None
    first = (lambda v: float(v[0]) if isinstance(v, (list, tuple)) or getattr(v, "VM", 1) > 1 else float(v))
    return [hd.pr.SoftcopyVOILUTTransformation(window_center=first(center), window_width=first(width),
                                               referenced_images=hd.ReferencedImageSequence([image]))]


def build_presentation_state(source: SourceStudy, result: StudyResult, *, created_at: float, device_uid: str,
                             identity: str) -> Dataset:
    """The presentation state planned as ``identity`` (a SOP Instance UID from planned_states);
    LookupError when none of this result has it (the result changed since it was planned)."""
    _applies(result)
    for number, image in enumerate(source.images, start=1):
        series_uid, sop_uid = _identity(source, result, created_at, device_uid, image)
        if sop_uid != identity:
            continue
        marks = result.marks_on(image.position)
        layer = hd.pr.GraphicLayer(LAYER, order=1, description="CAD marks of the AI lesion map", display_color=LAYER_COLOR)
        name, version = model_label(result.models, "versamammo")
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[image.dataset], series_instance_uid=series_uid, series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid, instance_number=number, manufacturer=MANUFACTURER,
            manufacturer_model_name=DEVICE_NAME, software_versions=SOFTWARE_VERSION,
            device_serial_number=derived_uid("device-serial", device_uid)[-16:],
            content_label="AI_CAD_MARKS", content_description=SERIES_DESCRIPTION,
            graphic_annotations=[_annotation(image, marks, layer)], graphic_layers=[layer],
            institution_name=source.get("InstitutionName") or None, content_creator_name=None,
            voi_lut_transformations=_voi(image.dataset), transfer_syntax_uid=ExplicitVRLittleEndian)
        when = stamp(created_at, source)
        for prefix in ("Series", "InstanceCreation", "PresentationCreation", "Content"):
            if f"{prefix}Date" in gsps or prefix in ("Series", "InstanceCreation"):
                setattr(gsps, f"{prefix}Date", when.date)
                setattr(gsps, f"{prefix}Time", when.time)
        gsps.SeriesDescription = SERIES_DESCRIPTION
        gsps.SoftwareVersions = [SOFTWARE_VERSION, f"{name}@{version}"[:64]]
        gsps.Laterality = image.laterality  # General Series 2C: the breast of the one image it presents
        if when.offset:
            gsps.TimezoneOffsetFromUTC = when.offset
        elif "TimezoneOffsetFromUTC" in gsps:
            del gsps.TimezoneOffsetFromUTC
        for item in gsps.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:  # highdicom stamps "now": the result's time instead
                item.ContributionDateTime = when.datetime + (when.offset or "")
        return gsps
    raise LookupError(f"no presentation state {identity} in this result")


def read_presentation_state(ds: Dataset) -> dict[str, Any]:
    """What a viewer draws: per referenced image, the rectangles, points and texts of our layer
    (plain dicts, what the tests compare with the result's marks)."""
    out: dict[str, Any] = {"sop_instance_uid": str(ds.SOPInstanceUID), "images": {}}
    for annotation in ds.get("GraphicAnnotationSequence", []):
        if annotation.GraphicLayer != LAYER:
            continue
        for ref in annotation.ReferencedImageSequence:
            entry = out["images"].setdefault(str(ref.ReferencedSOPInstanceUID), {"boxes": [], "points": [], "texts": []})
            for obj in annotation.get("GraphicObjectSequence", []):
                points = np.asarray(obj.GraphicData, dtype=float).reshape(-1, 2)
                if obj.GraphicType == "POINT":
                    entry["points"].append([float(points[0, 0]), float(points[0, 1])])
                else:
                    entry["boxes"].append([float(points[:, 0].min()), float(points[:, 1].min()),
                                           float(points[:, 0].max()), float(points[:, 1].max())])
            entry["texts"] += [str(t.UnformattedTextValue) for t in annotation.get("TextObjectSequence", [])]
    return out


__all__ = ["KIND", "SOP_CLASS_UID", "build_presentation_state", "planned_states", "read_presentation_state"]

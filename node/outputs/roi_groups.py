"""CAD marks in the TID 1500 SR: one TID 1410 planar ROI group per mark, through highdicom.

Why: a viewer that reads TID 1500 (OHIF, the IHE AI Results profile) draws a planar ROI group's
region on its image; the per-breast and per-finding groups (TID 1501) carry no geometry. Each mark
(node.marks) becomes a group with its own tracking identifier and UID, the region's closed
polyline on the source image (SCOORD, pixel coordinates of that image), the finding (the mark's
kind, CID 6014 codes as in the CAD SR), the finding site (breast and laterality), VersaMammo as the
algorithm, and the lesion-map score as Certainty of Finding in percent. Read back with highdicom's
public reader only (``get_planar_roi_measurement_groups``).
"""
from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept

from node.outputs import codes as C
from node.outputs.source import SourceImage
from node.outputs.identity import derived_uid
from node.study_result import StudyResult

CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")
PERCENT = CodedConcept("%", "UCUM", "Percent")


def _polyline(box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def region_groups(study_uid: str, result: StudyResult, images: tuple[SourceImage, ...],
                  algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per CAD mark of ``result`` whose image is among ``images``."""
    by_position = {i.position: i for i in images}
    groups = []
    for index, mark in enumerate(result.marks or (), start=1):
        image = by_position.get(mark.position)
        if image is None:
            continue
        side = image.laterality
        label = f"CAD mark {index}: {mark.kind} on {mark.position}"
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_polyline(mark.box),
            source_image=hd.sr.SourceImageForRegion(image.sop_class_uid, image.sop_instance_uid))
        score = hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(100.0 * float(mark.score), 2),
                                  unit=PERCENT, algorithm_id=algorithm)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid("tracking", study_uid, "mark", str(index), mark.position, mark.kind),
                identifier=label[:64]),
            referenced_region=region, finding_type=C.mark_concept(mark.kind),
            finding_sites=[hd.sr.FindingSite(anatomic_location=C.BREAST, laterality=C.side_code(side))],
            algorithm_id=algorithm, measurements=[score]))
    return groups


def read_region_groups(sr: hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR | hd.sr.EnhancedSR) -> list[dict[str, Any]]:
    """The CAD marks of a TID 1500 SR as highdicom reads them: kind, score, box, image UID (plain
    dicts: what a receiver reads, which the tests compare with the result's marks)."""
    out = []
    for group in sr.content.get_planar_roi_measurement_groups():
        finding = group.finding_type
        kind = C.mark_kind(finding.value, finding.scheme_designator) if finding is not None else None
        region = group.roi
        if kind is None or region is None:
            continue
        points = np.asarray(region.value, dtype=float).reshape(-1, 2)
        scores = [m.value for m in group.get_measurements(name=CERTAINTY_OF_FINDING)]
        out.append({"kind": kind, "score": float(scores[0]) / 100.0 if scores else None,
                    "box": [float(points[:, 0].min()), float(points[:, 1].min()),
                            float(points[:, 0].max()), float(points[:, 1].max())],
                    "sop_instance_uid": str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                    "tracking_identifier": group.tracking_identifier})
    return out


__all__ = ["read_region_groups", "region_groups"]

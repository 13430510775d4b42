"""The typed study result (node.study_result) writes exactly the JSON the node journaled before it
existed: same keys, same order, optional keys absent, numbers untouched. Every output UID and HL7
control ID is a hash of that JSON, so a round trip through the journal must change none of them;
the pinned values below were computed by the node before the result was typed."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES, FINDING_CLASSES
from models.preprocess.geometry import ModelGeometry
from models.report.parse import parse_report
from node.marks import image_marks, lesion_map_record, mark_settings
from node.outputs.identity import (control_id, document_identity, filler_order_number, output_identity,
                                   result_fingerprint)
from node.outputs.source import SourceImage, SourceStudy
from node.results import build_result
from node.study_result import CadMark, DocumentRef, LesionMap, Localization, MessageRef, StudyResult

UID = "1.2.826.0.1.3680043.8.498.1"
CREATED = 1_764_000_000.0
LABELS = {"birads": list(BIRADS_CLASSES), "density": list(DENSITY_CLASSES), "findings": list(FINDING_CLASSES)}
VERSIONS = {"versamammo": "versamammo-demo@3.0.0", "mammorg": "mammorg-demo@3.0.0"}
REPORT = ("FINDINGS:\nScattered fibroglandular densities.\nLeft breast, lower outer quadrant, 5 o'clock, anterior "
          "depth: a round circumscribed mass.\nRight breast: possible architectural distortion.\n\n"
          "IMPRESSION:\nLeft breast: BI-RADS 4A - suspicious.\nRight breast: BI-RADS 2 - benign.\n")
GEOMETRY = ModelGeometry(crop_x0=12.0, crop_y0=0.0, crop_w=240.0, flipped=True, scale_x=256 / 240, scale_y=0.8,
                         offset_x=0.0, offset_y=0.0, inner_w=256.0)
SR_LINK = {"study_uid": UID, "series_uid": "2.25.11", "sop_instance_uid": "2.25.12",
           "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34", "series_number": 9501, "instance_number": 1}

# A result as the node journals it, written out by hand: every field, an int where a float could be.
FIXED: dict[str, Any] = {
    "status": "partial", "missing_views": ["L-MLO"],
    "breasts": {
        "R": {"density": "B", "density_source": "report", "birads": "2", "birads_source": "report",
              "findings": [{"kind": "architectural_distortion", "status": "UNC", "locations": [], "descriptors": []}],
              "report": {"density": "B", "birads": "2"},
              "classifier": {"birads": "1", "birads_probabilities": {"0": 0.01, "1": 0.6, "2": 0.3, "3": 0.05,
                                                                     "4": 0.03, "5": 0.01},
                             "density": "B", "density_probabilities": {"A": 0.1, "B": 0.7, "C": 0.15, "D": 0.05},
                             "findings": [{"kind": "Mass", "score": 0.8}]}},
        "L": {"density": None, "density_source": None, "birads": "4A", "birads_source": "report",
              "findings": [{"kind": "mass", "status": "POS", "locations": ["loq", "clock_5", "anterior_depth"],
                            "descriptors": ["round", "circumscribed"]}],
              "report": {"density": None, "birads": "4A"}, "classifier": None}},
    "disagreements": [{"breast": "R", "field": "birads", "report": "2", "classifier": "1"}],
    "report": {"text": REPORT, "findings": "Scattered fibroglandular densities.", "impression": "BI-RADS 4A."},
    "relations": [["mass", "located_at", "loq"]],
    "models": dict(VERSIONS), "preliminary": True,
    "localization": {"attempted": True, "mark_threshold": 0.688, "max_marks_per_image": 3},
    "marks": [{"position": "R-CC", "kind": "mass", "score": 0.9123, "kind_score": 0.8, "center": [120.5, 88],
               "box": [100.0, 70.0, 141.3, 106]}],
    "lesion_maps": {"R-CC": {"map": [[0.0, 0.912], [0.1, 0]], "geometry": {"crop_x0": 12.0, "flipped": True},
                             "model_size": [256, 256]}},
    "timings": {"preprocess": 0.0123, "versamammo": 0.2, "mammorg": 1},
    "missing_why": {"L-MLO": "only a For Processing image"},
    "seconds": 1.734,
    "replaces": {"tid1500": SR_LINK, "oru": {"control_id": "MN0123456789abcdef", "filler_order_number": "AI0123"}},
    "documents": {"tid4000": {**SR_LINK, "sop_instance_uid": "2.25.13", "series_number": 9502}},
}
# What the node computed from FIXED before the result was typed (git e3bb8d6, plain dicts).
PINNED = {
    "fingerprint": "3fbd3bc6891051cc",
    "control_id": "MN20d2ef63de00cfc7",
    "filler_order_number": "AI0123",  # the replaced ORU's
    "tid1500_instance": "2.25.173297801459066154571708324094665988812",
    "tid4000_document": "2.25.10512720394072188895951332588105910337",  # with software version 0.9.0
}


def _source() -> SourceStudy:
    """Four made-up image headers, in UTC (so the SR stamp is the same on every machine)."""
    images = []
    for n, position in enumerate(("R-CC", "R-MLO", "L-CC", "L-MLO"), start=1):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = UID, f"{UID}.1"
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.2", f"{UID}.1.{n}"
        ds.PatientID, ds.TimezoneOffsetFromUTC = "P1", "+0000"
        images.append(SourceImage(position, ds))
    return SourceStudy(UID, tuple(images))


def _probs(n: int, hot: int, high: float) -> np.ndarray:
    p = np.full(n, (1 - high) / (n - 1))
    p[hot] = high
    return p


def _built() -> tuple[StudyResult, dict[str, Any]]:
    """A result made as the node makes it (node.results.build_result, then the pipeline's marks, maps,
    timings, missing_why and seconds, then what planning records), and the JSON the node wrote for
    it before the result was typed: the same steps on a dict, in the same order."""
    findings = np.full(len(FINDING_CLASSES), 0.1)
    findings[FINDING_CLASSES.index("Mass")] = 0.8
    per_breast = {side: {"birads": _probs(6, b, 0.7), "density": _probs(4, d, 0.6), "findings": findings}
                  for side, b, d in (("R", 1, 1), ("L", 4, 2))}  # R: BI-RADS 1 (report 2); L: density C (B)
    parsed = parse_report(REPORT)
    result = build_result(REPORT, parsed, per_breast, LABELS, VERSIONS, ("L-MLO",))
    prob = np.zeros((8, 8))
    prob[2, 5], prob[6, 1] = 0.93, 0.71
    marks = image_marks("R-CC", prob, GEOMETRY, (256, 256), (330, 300), findings, FINDING_CLASSES, 0.5, 3)
    assert len(marks) == 2
    settings = mark_settings({"mark_threshold": 0.5}, None, 3)
    lesion_map = lesion_map_record(prob, GEOMETRY, (256, 256))
    timings = {"preprocess": 0.0123, "versamammo": 0.2017, "mammorg": 1.5}
    result = replace(result, localization=Localization.from_json(settings),
                     marks=tuple(CadMark.from_json(m.to_dict()) for m in marks),
                     lesion_maps={"R-CC": LesionMap.from_json(lesion_map)}, timings=timings)
    result = replace(result, missing_why={"L-MLO": "only a For Processing image"}, seconds=1.734)
    result = replace(result, replaces={"tid1500": DocumentRef.from_json(SR_LINK)},
                     documents={"tid1500": DocumentRef.from_json({**SR_LINK, "instance_number": 2})})

    expected: dict[str, Any] = {
        "status": "partial", "missing_views": ["L-MLO"], "breasts": {},
        "disagreements": [{"breast": "R", "field": "birads", "report": "2", "classifier": "1"},
                          {"breast": "L", "field": "density", "report": "B", "classifier": "C"}],
        "report": {"text": REPORT, "findings": parsed.findings_text, "impression": parsed.impression_text},
        "relations": [list(t) for t in parsed.relations], "models": dict(VERSIONS), "preliminary": True}
    for side in ("R", "L"):
        reported = parsed.breasts[side]
        expected["breasts"][side] = {
            "findings": [f.to_dict() for f in reported.findings.values() if f.status in ("POS", "UNC")],
            "report": {"density": reported.density, "birads": reported.birads}}
    expected["localization"] = settings
    expected["marks"] = [m.to_dict() for m in marks]
    expected["lesion_maps"] = {"R-CC": lesion_map}
    expected["timings"] = timings
    expected["missing_why"] = {"L-MLO": "only a For Processing image"}
    expected["seconds"] = 1.734
    expected["replaces"] = {"tid1500": dict(SR_LINK)}
    expected["documents"] = {"tid1500": {**SR_LINK, "instance_number": 2}}
    return result, expected


def _journaled(data: dict[str, Any]) -> dict[str, Any]:
    """What Journal.get_result gives back for ``data`` (stored with sorted keys)."""
    return json.loads(json.dumps(data, sort_keys=True))


def _identities(result: StudyResult) -> dict[str, str]:
    source = _source()
    return {"control_id": control_id(UID, result), "filler": filler_order_number(UID, result),
            **{kind: output_identity(UID, result, kind).sop_instance_uid for kind in ("tid1500", "tid4000")},
            **{kind: document_identity(source, result, kind, CREATED, device_uid="2.25.77").sop_instance_uid
               for kind in ("tid1500", "tid4000", "gsps")}}


def test_a_built_result_writes_the_json_the_node_wrote_and_reads_back_equal() -> None:
    result, expected = _built()
    data = result.to_json()
    assert list(data) == ["status", "missing_views", "breasts", "disagreements", "report", "relations", "models",
                          "preliminary", "localization", "marks", "lesion_maps", "timings", "missing_why", "seconds",
                          "replaces", "documents"]
    for side in ("R", "L"):
        breast = data["breasts"][side]
        assert list(breast) == ["density", "density_source", "birads", "birads_source", "findings", "report",
                                "classifier"]
        assert list(breast["classifier"]) == ["birads", "birads_probabilities", "density", "density_probabilities",
                                              "findings"]
        assert {k: breast[k] for k in ("findings", "report")} == expected["breasts"][side]
    assert [data["breasts"][side]["classifier"][f] for side in ("R", "L") for f in ("birads", "density")] == \
        ["1", "B", "4", "C"]
    for key in ("status", "missing_views", "disagreements", "report", "relations", "models", "preliminary",
                "localization", "marks", "lesion_maps", "timings", "missing_why", "seconds", "replaces", "documents"):
        assert data[key] == expected[key], key
        assert json.dumps(data[key]) == json.dumps(expected[key]), key  # same key order, same number format
    assert StudyResult.from_json(data) == result
    assert json.dumps(StudyResult.from_json(json.loads(json.dumps(data))).to_json()) == json.dumps(data)


def test_a_journaled_result_round_trips_and_keeps_every_identity() -> None:
    result, _ = _built()
    stored = json.dumps(result.to_json(), sort_keys=True)
    back = StudyResult.from_json(json.loads(stored))
    assert back == result
    assert json.dumps(back.to_json(), sort_keys=True) == stored
    assert _identities(back) == _identities(result)
    # the identities do depend on what the result says: a round trip that lost something would show
    changed = replace(result, marks=result.marks[:1] if result.marks else ())
    assert _identities(changed)["tid4000"] != _identities(result)["tid4000"]
    assert _identities(changed)["control_id"] == _identities(result)["control_id"]  # the ORU shows no marks


def test_identities_are_those_the_node_computed_before_the_result_was_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    import node.outputs.common

    monkeypatch.setattr(node.outputs.common, "SOFTWARE_VERSION", "0.9.0")  # the SRs' UIDs cover the version
    for data in (FIXED, _journaled(FIXED)):
        result = StudyResult.from_json(data)
        assert result.to_json() == FIXED
        assert result_fingerprint(UID, result.models, result) == PINNED["fingerprint"]
        assert control_id(UID, result) == PINNED["control_id"]
        assert filler_order_number(UID, result) == PINNED["filler_order_number"]
        assert output_identity(UID, result, "tid1500").sop_instance_uid == PINNED["tid1500_instance"]
        assert document_identity(_source(), result, "tid4000", CREATED, device_uid="2.25.77",
                                 extra=["1.2.840.10008.5.1.4.1.1.88.50"]).sop_instance_uid == PINNED["tid4000_document"]


def test_numbers_keep_their_json_type() -> None:
    data = StudyResult.from_json(FIXED).to_json()
    assert data == FIXED and json.dumps(data) == json.dumps(FIXED)
    assert isinstance(data["marks"][0]["center"][1], int) and isinstance(data["marks"][0]["box"][3], int)
    assert isinstance(data["timings"]["mammorg"], int) and isinstance(data["lesion_maps"]["R-CC"]["map"][1][1], int)


def test_the_incomplete_result_loads_without_report_relations_or_breasts() -> None:
    data = {"status": "incomplete", "missing_views": ["R-MLO", "L-CC"], "breasts": {}, "disagreements": [],
            "report": None, "models": {}, "preliminary": True, "missing_why": {"R-MLO": "only For Processing"},
            "seconds": 0.002}
    result = StudyResult.from_json(data)
    assert result.to_json() == data and list(result.to_json()) == list(data)
    assert result.report is None and result.relations is None and not result.has_model_output
    made = replace(StudyResult.incomplete(["R-MLO", "L-CC"]), missing_why={"R-MLO": "only For Processing"},
                   seconds=0.002)
    assert json.dumps(made.to_json()) == json.dumps(data)  # what the pipeline journals for policy "report"
    assert StudyResult.from_json(_journaled(data)) == result


def test_a_result_from_before_marks_and_numbered_links_loads_unchanged() -> None:
    """Journaled before localisation, planned documents and filler order numbers existed: sorted
    keys (the journal's), links with only the UIDs; nothing is added on the way back."""
    old = _journaled({key: copy.deepcopy(FIXED[key]) for key in (
        "status", "missing_views", "breasts", "disagreements", "report", "relations", "models", "preliminary",
        "timings", "seconds")})
    old["replaces"] = {"oru": {"control_id": "MN0123456789abcdef"},
                       "tid1500": {k: SR_LINK[k] for k in ("study_uid", "series_uid", "sop_instance_uid",
                                                          "sop_class_uid")}}
    result = StudyResult.from_json(old)
    assert result.to_json() == old
    assert json.dumps(result.to_json(), sort_keys=True) == json.dumps(old, sort_keys=True)
    assert result.localization is None and result.marks is None and result.documents is None
    assert result.replaced_message() == MessageRef("MN0123456789abcdef")
    link = result.replaced_document("tid1500")
    assert link is not None and link.series_number is None and "series_number" not in link.to_json()
    assert filler_order_number(UID, result).startswith("AI") and filler_order_number(UID, result) != "AI0123"


def test_a_key_it_does_not_know_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError, match="surprise"):
        StudyResult.from_json({**FIXED, "surprise": 1})
    with pytest.raises(ValueError, match="colour"):
        StudyResult.from_json({**FIXED, "marks": [{**FIXED["marks"][0], "colour": "red"}]})
    breasts = copy.deepcopy(FIXED["breasts"])
    breasts["R"]["classifier"]["extra"] = True
    with pytest.raises(ValueError, match="extra"):
        StudyResult.from_json({**FIXED, "breasts": breasts})

"""Issue 21 done-when, with real peers: a phantom study with a lesion goes to a real node whose
VersaMammo package has a lesion map, and Orthanc receives a Mammography CAD SR with a coordinate
finding on the right image, a presentation state that puts the mark on the lesion and a heatmap
secondary capture labelled derived / not for diagnosis per image; a package without a lesion map
still serves, with no marks and a CAD SR that says localisation was not attempted.

The lesion map of the random-weight test package says nothing, so in the first test the runner's
map is replaced, image by image, by the box-supervision target of training (what a perfect map
gives), after the package was installed (its golden check runs the real graph): everything after the
model (geometry back to the source, the result, planning, rendering, C-STORE, Orthanc) is the
node's own. Real maps are measured in bench.froc."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from export.golden import phantom_images
from export.package import finish_package
from export.versamammo import export_versamammo
from models.preprocess import normalize
from models.versamammo.config import student_preprocess_config
from node.inference.versamammo import VersaMammoRunner
from node.outputs.gsps import read_presentation_state
from node.outputs.heatmap_sc import read_secondary_capture
from node.outputs.sr_cad import ATTEMPTED, read_mammography_cad_sr
from node.packages.registry import ModelRegistry
from tests.export.test_export_lesion_map import lesion_student
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for
from tests.node.marks_helpers import TINY, lesion_boxes, near, oracle_maps
from tests.node.peers import Orthanc

pytestmark = pytest.mark.slow

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def lesion_package(tmp_path_factory):
    student = lesion_student()
    out = tmp_path_factory.mktemp("vm-lesion-e2e") / "pkg"
    fields = export_versamammo(student, out, phantom_images(student_preprocess_config(student.cfg), 2),
                               precisions=("fp32",))
    path, _ = finish_package(out, "versamammo-lesion", "1.0.0", fields, training={"note": "random weights"})
    return path


def _node(tmp_path, start_node, packages, pacs, reports=("tid4000", "gsps", "heatmap_sc"), **results):
    data = tmp_path / "var"
    registry = ModelRegistry(data / "models")
    for package in packages:
        registry.install(package, activate=True)
    return start_node(data_dir=data, results=results,
                      outputs={"dicom": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                          "port": pacs.dicom_port, "reports": list(reports), "timeout": 5}]},
                      outbox={"backoff_seconds": 0.3, "max_backoff_seconds": 1.0, "poll_seconds": 0.3})


def _lesion_study(phantom_dir: Path) -> Path:
    return next(p for p in sorted(phantom_dir.iterdir()) if p.is_dir() and lesion_boxes(p))


def _texts(item) -> list[str]:
    """Every TEXT value of an SR content tree."""
    own = [str(item.TextValue)] if "TextValue" in item else []
    return own + [t for child in item.get("ContentSequence", []) for t in _texts(child)]


def _centre(box: list[float]) -> list[float]:
    return [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]


def test_orthanc_gets_a_cad_finding_and_a_presentation_state_on_the_lesion(
        tmp_path, start_node, model_packages, lesion_package, phantom_dir, monkeypatch) -> None:
    study = _lesion_study(phantom_dir)
    maps = oracle_maps(study)
    inputs = [(normalize(prepared.image, TINY), target) for target, prepared, _ in maps.values()]
    run = VersaMammoRunner.run

    def with_target_maps(self, images):
        out = run(self, images)
        lesion_map = out.lesion_map.copy()
        for i, image in enumerate(images):
            match = [target for array, target in inputs if np.array_equal(array, image)]
            lesion_map[i] = match[0] if match else 0.0
        return replace(out, lesion_map=lesion_map)

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = _node(tmp_path, start_node, [lesion_package, model_packages["rg1"]], pacs, mark_threshold=0.2)
        monkeypatch.setattr(VersaMammoRunner, "run", with_target_maps)  # after install: its golden check is real
        assert run_storescu(node.port, study_files(study)).returncode == 0
        uid = study_uid_of(study)
        rows = wait_for(lambda: (r := node.app.outbox.queue.list(study_uid=uid)) and len(r) == 9
                        and all(x.state == "DELIVERED" for x in r) and r, timeout=120)
        assert sorted(r.kind for r in rows) == ["gsps"] * 4 + ["heatmap_sc"] * 4 + ["tid4000"]
        result = node.journal.get_result(uid)
        assert result["localization"]["attempted"] and result["marks"]
        assert set(result["lesion_maps"]) == {"R-CC", "R-MLO", "L-CC", "L-MLO"}
        boxes = lesion_boxes(study)
        images = {p: str(pydicom.dcmread(study / f"{p}.dcm", stop_before_pixels=True).SOPInstanceUID)
                  for p in ("R-CC", "R-MLO", "L-CC", "L-MLO")}
        # The CAD SR in Orthanc: single-image findings on the images with the lesion, over it.
        (sr,) = pacs.instances_of_modality("SR")
        cad = read_mammography_cad_sr(pydicom.dcmread(io.BytesIO(pacs.file(sr["id"]))))
        assert cad["summary"] == "All algorithms succeeded; with findings"
        assert {m["position"] for m in cad["marks"]} == set(boxes)
        for position, lesions in boxes.items():
            marks = [m for m in cad["marks"] if m["position"] == position]
            assert all(m["sop_instance_uid"] == images[position] for m in marks)
            assert all(any(near(_centre(b), m["box"], 0) for m in marks) for b in lesions)
        # A presentation state per image in Orthanc, in the source study; the lesion's image has the mark on it.
        states = pacs.instances_of_modality("PR")
        assert len(states) == 4 and {s["tags"]["SOPClassUID"] for s in states} == {GSPS}
        assert {s["parent_study"] for s in states} == {uid}
        drawn = {}
        for state in states:
            back = read_presentation_state(pydicom.dcmread(io.BytesIO(pacs.file(state["id"]))))
            drawn.update(back["images"])
        assert set(drawn) == set(images.values())
        for position, image_uid in images.items():
            regions = drawn[image_uid]["boxes"]
            if position not in boxes:
                assert regions == [] and drawn[image_uid]["texts"][0].endswith(": 0 marks")
                continue
            assert all(any(near(_centre(b), r, 0) for r in regions) for b in boxes[position]), position
            assert any(near(p, b, 60) for p in drawn[image_uid]["points"] for b in boxes[position])
        # A heatmap secondary capture per image, labelled derived and not for diagnosis.
        captures = pacs.instances_of_modality("OT")
        assert len(captures) == 4 and {c["parent_study"] for c in captures} == {uid}
        sources = set()
        for capture in captures:
            back = read_secondary_capture(pydicom.dcmread(io.BytesIO(pacs.file(capture["id"]))))
            assert back["sop_class_uid"] == SC and back["image_type"] == ["DERIVED", "SECONDARY"]
            assert back["burned_in_annotation"] == "YES" and "NOT FOR DIAGNOSIS" in back["series_description"]
            sources.add(back["source"])
        assert sources == set(images.values())
    finally:
        pacs.stop()


def test_a_package_without_lesion_map_gives_no_marks_and_says_so(
        tmp_path, start_node, model_packages, phantom_dir) -> None:
    study = _lesion_study(phantom_dir)
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = _node(tmp_path, start_node, [model_packages["vm1"], model_packages["rg1"]], pacs)
        assert run_storescu(node.port, study_files(study)).returncode == 0
        uid = study_uid_of(study)
        rows = wait_for(lambda: (r := node.app.outbox.queue.list(study_uid=uid)) and len(r) == 1
                        and r[0].state == "DELIVERED" and r, timeout=120)
        assert rows[0].kind == "tid4000"  # no presentation state, no heatmap: nothing to draw
        result = node.journal.get_result(uid)
        assert result["localization"] == {"attempted": False, "why": "the VersaMammo package has no lesion map"}
        assert "marks" not in result and "lesion_maps" not in result
        (sr,) = pacs.instances_of_modality("SR")
        ds = pydicom.dcmread(io.BytesIO(pacs.file(sr["id"])))
        back = read_mammography_cad_sr(ds)
        assert back["marks"] == [] and back["summary"] == "All algorithms succeeded; without findings"
        assert any(ATTEMPTED in text for text in _texts(ds))
    finally:
        pacs.stop()


def test_the_shipped_demo_package_marks_a_lesion_study_end_to_end(tmp_path, start_node, phantom_dir) -> None:
    """With no substitution at all: the shipped VersaMammo demo package's own lesion map, through the
    node, to Orthanc. Skipped where the shipped demo package has no lesion map (2.0.0); how often its
    marks hit is measured by bench.froc (docs/results.md), so this checks the path, not the figures."""
    from node.packages.demo import shipped_packages
    from models.package.manifest import read_manifest

    shipped = shipped_packages()
    if shipped is None or "localization" not in read_manifest(shipped["versamammo"]).data:
        pytest.skip("the shipped VersaMammo demo package has no lesion map")
    study = _lesion_study(phantom_dir)
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = _node(tmp_path, start_node, [shipped["versamammo"], shipped["mammorg"]], pacs)
        assert run_storescu(node.port, study_files(study)).returncode == 0
        uid = study_uid_of(study)
        rows = wait_for(lambda: (r := node.app.outbox.queue.list(study_uid=uid)) and len(r) >= 5
                        and all(x.state == "DELIVERED" for x in r) and r, timeout=180)
        result = node.journal.get_result(uid)
        assert result["localization"]["attempted"] and set(result["lesion_maps"]) == {"R-CC", "R-MLO", "L-CC", "L-MLO"}
        (sr,) = pacs.instances_of_modality("SR")
        cad = read_mammography_cad_sr(pydicom.dcmread(io.BytesIO(pacs.file(sr["id"]))))
        assert len(cad["marks"]) == len(result["marks"])
        assert len(pacs.instances_of_modality("PR")) == 4 and len(pacs.instances_of_modality("OT")) == 4
        assert sorted(r.kind for r in rows).count("gsps") == 4
    finally:
        pacs.stop()

"""A changed result of a study names the outputs its receivers already hold (node.outputs.amend):
SR predecessors, ORU replacements (preliminary again, same filler order number, an NTE naming the
replaced message), and no stale output sent after a newer one."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.config import HL7Output
from node.journal import Journal
from node.outputs.amend import delivered_identities, replaced_outputs
from node.outputs.hl7 import build_oru, parse_oru, validate_oru
from node.outputs.identity import control_id, filler_order_number
from node.outputs.common import DEVICE_NAME
from node.outputs.prepare import planned_document
from node.outputs.identity import derived_uid, output_identity
from node.outputs.sr_cad import build_mammography_cad_sr
from node.outputs.sr_tid1500 import build_tid1500_sr
from node.study_result import StudyResult
from tests.node.outputs_helpers import phantom_case
from tests.tools import require_tool

CREATED = 1_764_000_000.0
UID = "1.2.3.4"
DEVICE = derived_uid("device", DEVICE_NAME)  # what the builders use without an installation


def _result(version: str, status: str = "complete") -> dict:
    return {"status": status, "models": {"versamammo": f"vm@{version}", "mammorg": "rg@1"},
            "breasts": {"R": {"birads": "1"}, "L": {"birads": "2"}}, "report": {"text": version}}


def _json(links: dict) -> dict:
    """``replaced_outputs``'s links as the result's JSON keeps them (``result["replaces"]``)."""
    return {kind: link.to_json() for kind, link in links.items()}


def _delivered(*results: dict, kinds=("tid1500", "tid4000", "oru")) -> set[tuple[str, str]]:
    out = set()
    for r in results:
        for kind in kinds:
            typed = StudyResult.from_json(r)
            out.add((kind, control_id(UID, typed) if kind == "oru"
                     else output_identity(UID, typed, kind).sop_instance_uid))
    return out


def test_first_result_replaces_nothing() -> None:
    assert _json(replaced_outputs(None, StudyResult.from_json(_result("1")), UID, set())) == {}


def test_a_changed_result_names_each_delivered_output_it_replaces() -> None:
    v1, v2 = _result("1"), _result("2")
    links = _json(replaced_outputs(StudyResult.from_json(v1), StudyResult.from_json(v2), UID,
                                   _delivered(v1, kinds=("tid1500", "oru"))))
    assert set(links) == {"tid1500", "oru"}  # the CAD SR of v1 never reached anyone
    ident = output_identity(UID, StudyResult.from_json(v1), "tid1500")
    # v1 was journaled without planned documents (as before issue 18.10): named by the result alone
    assert links["tid1500"] == {"study_uid": UID, "series_uid": ident.series_instance_uid,
                                "sop_instance_uid": ident.sop_instance_uid,
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.33",
                                "series_number": 9501, "instance_number": 1}
    assert links["oru"] == {"control_id": control_id(UID, StudyResult.from_json(v1)),
                            "filler_order_number": filler_order_number(UID, StudyResult.from_json(v1))}


def test_undelivered_results_pass_on_the_link_to_what_was_delivered() -> None:
    v1, v2, v3 = _result("1"), _result("2"), _result("3")
    v2["replaces"] = _json(replaced_outputs(StudyResult.from_json(v1), StudyResult.from_json(v2), UID, _delivered(v1)))
    links = _json(replaced_outputs(StudyResult.from_json(v2), StudyResult.from_json(v3), UID,
                                   _delivered(v1)))  # v2 never went out (receivers down)
    assert links["oru"]["control_id"] == control_id(UID, StudyResult.from_json(v1))
    assert links["tid4000"]["sop_instance_uid"] == output_identity(UID, StudyResult.from_json(v1),
                                                                   "tid4000").sop_instance_uid


def test_an_identical_result_keeps_its_oru_link_and_its_srs_replace_the_delivered_ones() -> None:
    """The ORU of an identical result is the same message (same control ID): no link to itself.
    Its SRs are new documents (their creation time is in their UIDs, issue 18.10): they name the
    delivered SRs of the earlier processing as predecessors."""
    v1, v2 = _result("1"), _result("2")
    v2["replaces"] = _json(replaced_outputs(StudyResult.from_json(v1), StudyResult.from_json(v2), UID, _delivered(v1)))
    again = {k: v for k, v in v2.items() if k != "replaces"}
    assert _json(replaced_outputs(StudyResult.from_json(v2), StudyResult.from_json(again), UID,
                                  _delivered(v1, v2)))["oru"] == v2["replaces"]["oru"]
    links = _json(replaced_outputs(StudyResult.from_json(v1), StudyResult.from_json(dict(v1)), UID, _delivered(v1)))
    assert "oru" not in links
    assert {k: links[k]["sop_instance_uid"] for k in ("tid1500", "tid4000")} == {
        k: output_identity(UID, StudyResult.from_json(v1), k).sop_instance_uid for k in ("tid1500", "tid4000")}


def test_planned_documents_are_what_a_later_result_links_to_with_the_next_numbers() -> None:
    """Issue 18.10/18.11: the SRs planned for a result (node.outputs.prepare) are recorded in it;
    a later result links to exactly those, one instance number on, in the same series number when
    the models are the same and 10 further on in a new series."""
    from node.outputs.amend import document_numbers

    v1 = _result("1")
    v1["documents"] = {"tid4000": {"study_uid": UID, "series_uid": "2.25.7", "sop_instance_uid": "2.25.8",
                                   "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.50", "series_number": 9502,
                                   "instance_number": 1}}
    v2 = _result("1")
    v2["replaces"] = _json(replaced_outputs(StudyResult.from_json(v1), StudyResult.from_json(v2), UID,
                                            {("tid4000", "2.25.8")}))
    assert v2["replaces"]["tid4000"] == v1["documents"]["tid4000"]
    assert document_numbers(StudyResult.from_json(v2), "tid4000", "2.25.7") == (9502, 2)
    assert document_numbers(StudyResult.from_json(v2), "tid4000", "2.25.99") == (9512, 2)
    assert document_numbers(StudyResult.from_json(v1), "tid4000", "2.25.7") == (9502, 1)


def _amended_case(phantom_dir: Path):
    """(source, before, after): ``before`` planned (as the pipeline does) and delivered at CREATED."""
    study = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    source, result = phantom_case(study)
    before = dict(result, models={**result["models"], "versamammo": "versamammo-test@0.9.0"})
    before["documents"] = {k: planned_document(k, source, StudyResult.from_json(before), CREATED, DEVICE).to_json()
                           for k in ("tid1500", "tid4000")}
    delivered = {(k, d["sop_instance_uid"]) for k, d in before["documents"].items()}
    delivered.add(("oru", control_id(source.study_uid, StudyResult.from_json(before))))
    return source, before, dict(result, replaces=_json(replaced_outputs(StudyResult.from_json(before),
                                                                        StudyResult.from_json(result),
                                                                        source.study_uid, delivered)))


@pytest.mark.parametrize("kind", ["tid1500", "tid4000"])
def test_sr_of_a_replacing_result_has_its_predecessor_and_stays_valid(phantom_dir: Path, tmp_path: Path,
                                                                      kind: str) -> None:
    source, before, after = _amended_case(phantom_dir)
    build = build_tid1500_sr if kind == "tid1500" else build_mammography_cad_sr
    old, new = (build(source, StudyResult.from_json(before), created_at=CREATED),
                build(source, StudyResult.from_json(after), created_at=CREATED + 60))
    assert old.SOPInstanceUID == before["documents"][kind]["sop_instance_uid"]  # planned = built
    assert (new.InstanceNumber, new.SeriesNumber) == (2, old.SeriesNumber + 10)  # a revision, other models
    [study] = new.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [sop] = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPClassUID,
            sop.ReferencedSOPInstanceUID) == (old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPClassUID,
                                              old.SOPInstanceUID)
    path = tmp_path / "sr.dcm"
    new.save_as(path, enforce_file_format=True)
    report = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    assert "Error" not in report.stdout + report.stderr, report.stdout + report.stderr


def test_oru_of_a_replacing_result_is_preliminary_again_with_the_same_filler_order(phantom_dir: Path) -> None:
    """Issue 18.2: HL7 table 0085 keeps C for replacing a final result; a replaced preliminary AI
    result goes again as P with the same filler order number and an NTE naming the replaced message."""
    source, before, after = _amended_case(phantom_dir)
    for mode in ("ai_result", "exam_order"):
        settings = HL7Output(host="127.0.0.1", port=2575, order_mode=mode)
        first = build_oru(source, StudyResult.from_json(before), settings, created_at=CREATED)
        second = build_oru(source, StudyResult.from_json(after), settings, created_at=CREATED + 60)
        validate_oru(second)
        old, new = parse_oru(first), parse_oru(second)
        assert old["result_status"] == new["result_status"] == "P"
        obx_status = {line.split("|")[11] for line in second.split("\r") if line.startswith("OBX|")}
        assert obx_status == {"P"}
        assert new["control_id"] != old["control_id"] and new["filler_order"] == old["filler_order"] != ""
        assert old["replaces"] is None and new["replaces"] == old["control_id"]
        notes = [line for line in second.split("\r") if line.startswith("NTE|")]
        assert f"replaces the one sent in message {old['control_id']}" in notes[-1]


def test_a_replacing_result_with_other_models_keeps_the_filler_order_number(phantom_dir: Path) -> None:
    """An incomplete result (no models ran) replaced by a complete one: the RIS replaces it too."""
    source, result = phantom_case(sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0])
    incomplete = {"status": "incomplete", "missing_views": ["L-CC"], "breasts": {}, "disagreements": [],
                  "report": None, "models": {}, "preliminary": True}
    assert filler_order_number(source.study_uid, StudyResult.from_json(incomplete)) != filler_order_number(
        source.study_uid, StudyResult.from_json(result))
    after = dict(result, replaces=_json(replaced_outputs(
        StudyResult.from_json(incomplete), StudyResult.from_json(result), source.study_uid,
        {("oru", control_id(source.study_uid, StudyResult.from_json(incomplete)))})))
    settings = HL7Output(host="127.0.0.1", port=2575)
    first = parse_oru(build_oru(source, StudyResult.from_json(incomplete), settings, created_at=CREATED))
    second = parse_oru(build_oru(source, StudyResult.from_json(after), settings, created_at=CREATED + 60))
    assert second["filler_order"] == first["filler_order"] and second["replaces"] == first["control_id"]
    assert second["result_status"] == "P" and second["status"] == "complete"


def test_a_newer_result_dead_letters_older_outputs_still_waiting(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    with journal.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, state, first_received_at, last_received_at, updated_at) "
                   "VALUES (?, 'PROCESSING', 0, 0, 0)", (UID,))
    old = [{"destination": "pacs", "kind": "tid1500", "identity": "2.25.1", "payload": "outbox/a.dcm"},
           {"destination": "hl7", "kind": "oru", "identity": "MN1", "payload": "outbox/a.hl7"}]
    assert journal.finish_study(UID, _result("1"), "done", old)
    with journal.transaction() as db:
        db.execute("UPDATE outbox SET state = 'DELIVERED' WHERE identity = 'MN1'")
    journal.transition(UID, "DONE", "PROCESSING", "again")
    new = [{"destination": "pacs", "kind": "tid1500", "identity": "2.25.2", "payload": "outbox/b.dcm"},
           {"destination": "hl7", "kind": "oru", "identity": "MN2", "payload": "outbox/b.hl7"}]
    assert journal.finish_study(UID, _result("2"), "done", new)
    states = {identity: (state, error) for identity, state, error in
              journal.query("SELECT identity, state, last_error FROM outbox")}
    assert states["2.25.1"][0] == "DEAD" and "superseded" in states["2.25.1"][1]
    assert states["MN1"] == ("DELIVERED", None)  # already with the RIS: the new ORU replaces it
    assert states["2.25.2"][0] == states["MN2"][0] == "PENDING"
    assert delivered_identities(journal, UID) == {("oru", "MN1")}


def test_a_destination_that_changed_its_sr_class_gets_only_the_new_one(tmp_path: Path) -> None:
    """tid1500_sop_class changed from comprehensive3d to enhanced while the old SR waited (e.g. the
    PACS refused 3D SR and retries were pending): the old rendering is superseded, not sent later."""
    journal = Journal(tmp_path / "journal.sqlite")
    with journal.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, state, first_received_at, last_received_at, updated_at) "
                   "VALUES (?, 'PROCESSING', 0, 0, 0)", (UID,))
    old = [{"destination": "pacs", "kind": "tid1500", "identity": "2.25.1", "payload": "outbox/a.dcm"},
           {"destination": "pacs", "kind": "tid4000", "identity": "2.25.3", "payload": "outbox/c.dcm"}]
    assert journal.finish_study(UID, _result("1"), "done", old)
    journal.transition(UID, "DONE", "PROCESSING", "again")
    new = [{"destination": "pacs", "kind": "tid1500-enhanced", "identity": "2.25.2", "payload": "outbox/b.dcm"},
           {"destination": "pacs", "kind": "tid4000", "identity": "2.25.3", "payload": "outbox/c.dcm"}]
    assert journal.finish_study(UID, _result("2"), "done", new)
    states = dict(journal.query("SELECT identity, state FROM outbox"))
    assert states == {"2.25.1": "DEAD", "2.25.2": "PENDING", "2.25.3": "PENDING"}

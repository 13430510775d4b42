"""The receive path over real sockets: DCMTK and pynetdicom peers against the real listener."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from node.assembly import COMPLETE
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for
from tests.node.scu_helpers import MG_PRESENTATION, associate, encode, load, send_raw
from tests.tools import require_tool
from phantoms.study import PhantomOptions, write_phantom_studies


def _first_study(phantom_dir: Path) -> Path:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]


def test_four_views_from_storescu_complete_after_settle(start_node, phantom_dir: Path) -> None:
    # The settle rule alone (closing on release has its own tests: test_release.py).
    node = start_node(assembly={"settle_seconds": 0.5, "close_on_release": False})
    study_dir = _first_study(phantom_dir)
    result = run_storescu(node.port, study_files(study_dir))
    assert result.returncode == 0, result.stderr
    uid = study_uid_of(study_dir)
    study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s)
    assert study.instance_count == 4
    waited = study.closed_at - study.four_views_at
    assert 0.5 <= waited <= 0.6, f"closed {waited:.3f} s after the fourth view"
    assert set(study.selection["positions"]) == {"R-CC", "R-MLO", "L-CC", "L-MLO"}
    assert study.selection["missing"] == []
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]
    # Stored exactly as sent: same transfer syntax, same pixel bytes.
    for instance in node.journal.study_instances(uid):
        stored = dcmread(node.settings.data_dir / instance.path)
        original = dcmread(study_dir / f"{instance.position}.dcm")
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.PixelData == original.PixelData
        assert stored.SOPInstanceUID == original.SOPInstanceUID


@pytest.mark.parametrize(
    ("variant", "propose", "syntax"),
    [
        ("jpeg-ls", "-xt", "1.2.840.10008.1.2.4.80"),
        ("jpeg2000", "-xv", "1.2.840.10008.1.2.4.90"),
        ("rle", "-xr", "1.2.840.10008.1.2.5"),
        ("deflated", "-xd", "1.2.840.10008.1.2.1.99"),
        ("implicit", "-xi", "1.2.840.10008.1.2"),
        ("jpeg-lossless", "-xs", "1.2.840.10008.1.2.4.70"),
    ],
)
def test_each_transfer_syntax_is_stored_as_received(start_node, tmp_path: Path, variant: str, propose: str,
                                                     syntax: str) -> None:
    node = start_node()
    generated = "explicit" if variant == "jpeg-lossless" else variant
    write_phantom_studies(tmp_path / "in", 1, seed=3, options=PhantomOptions(transfer_syntax=generated))
    study_dir = next((tmp_path / "in").iterdir())
    files = study_files(study_dir)
    if variant == "jpeg-lossless":  # pydicom cannot encode it; DCMTK can
        dcmcjpeg = require_tool("dcmcjpeg")
        for f in files:
            subprocess.run([dcmcjpeg, "+e1", str(f), str(f)], check=True, capture_output=True)
    result = run_storescu(node.port, files, propose)
    assert result.returncode == 0, result.stderr
    uid = study_uid_of(study_dir)
    wait_for(lambda: node.study(uid) and node.study(uid).instance_count == 4)
    for instance in node.journal.study_instances(uid):
        assert instance.transfer_syntax == syntax
        stored = dcmread(node.settings.data_dir / instance.path)
        original = dcmread(study_dir / f"{instance.position}.dcm")
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == original.PixelData  # byte for byte: no transcoding
        assert (stored.pixel_array == original.pixel_array).all()


def test_echoscu_and_pynetdicom_peers(start_node, phantom_dir: Path) -> None:
    node = start_node()
    echoscu = require_tool("echoscu")
    result = subprocess.run([echoscu, "-aec", "MAMMO_NODE", "127.0.0.1", str(node.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assoc = associate(node.port)
    assert assoc.is_established
    status = assoc.send_c_store(_first_study(phantom_dir) / "R-CC.dcm")
    assoc.release()
    assert status.Status == 0x0000


def test_extra_views_are_kept_and_listed(start_node, phantom_extras_dir: Path) -> None:
    node = start_node()
    study_dir = next(p for p in phantom_extras_dir.iterdir() if p.is_dir())
    files = sorted(study_dir.glob("*.dcm"))
    assert len(files) > 4
    assert run_storescu(node.port, files).returncode == 0
    uid = study_uid_of(study_dir)
    study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s)
    assert study.instance_count == len(files)
    assert len(study.selection["extras"]) == len(files) - 4
    labels = " ".join(e["label"] for e in study.selection["extras"])
    assert "spot_compression" in labels or "XCCL" in labels
    assert all(e["why"] == "not a standard CC/MLO view" for e in study.selection["extras"])


def test_identical_duplicate_is_acknowledged_and_ignored(start_node, phantom_dir: Path) -> None:
    node = start_node()
    path = _first_study(phantom_dir) / "L-CC.dcm"
    for _ in range(2):
        assert run_storescu(node.port, [path]).returncode == 0
    sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert len(node.journal.find_instances_by_sop(sop)) == 1


def test_different_content_duplicate_is_kept_beside_with_a_warning(start_node, phantom_dir: Path) -> None:
    node = start_node()
    path = _first_study(phantom_dir) / "L-MLO.dcm"
    ds = load(path)
    assoc = associate(node.port)
    assert assoc.is_established
    first = assoc.send_c_store(ds)
    ds.SeriesDescription = "changed by the modality"
    second = assoc.send_c_store(ds)
    assoc.release()
    assert first.Status == 0x0000
    assert second.Status == 0xB000
    assert "duplicate" in second.ErrorComment
    rows = node.journal.find_instances_by_sop(ds.SOPInstanceUID)
    assert len(rows) == 2 and rows[1].duplicate_of == rows[0].id
    paths = [node.settings.data_dir / r.path for r in rows]
    assert all(p.exists() for p in paths) and paths[0] != paths[1]
    assert dcmread(paths[1]).SeriesDescription == "changed by the modality"


def _bad_payloads(path: Path) -> dict[str, tuple[str, bytes, int, str]]:
    """name -> (sop instance uid, dataset bytes, expected status, reason fragment)."""
    good = load(path)
    uid = str(good.SOPInstanceUID)
    no_study = load(path)
    del no_study.StudyInstanceUID
    wrong_class = load(path)
    wrong_class.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    bad_pixels = load(path)
    bad_pixels.Rows = int(bad_pixels.Rows) + 7
    garbage = b"this is a text file, not a DICOM dataset\n" * 20
    return {
        "unparseable": (uid, garbage, 0xC000, "cannot parse"),
        "missing_study_uid": (uid, encode(no_study), 0xA900, "missing StudyInstanceUID"),
        "wrong_sop_class": (uid, encode(wrong_class), 0xA900, "SOP Class UID"),
        "pixels_vs_rows": (uid, encode(bad_pixels), 0xA900, "pixel data holds"),
    }


@pytest.mark.parametrize("case", ["unparseable", "missing_study_uid", "wrong_sop_class", "pixels_vs_rows"])
def test_bad_input_is_refused_quarantined_and_the_listener_goes_on(start_node, phantom_dir: Path, case: str) -> None:
    node = start_node()
    study_dir = _first_study(phantom_dir)
    uid, payload, expected, reason = _bad_payloads(study_dir / "R-MLO.dcm")[case]
    assoc = associate(node.port)
    assert assoc.is_established
    status = send_raw(assoc, MG_PRESENTATION, uid, payload)
    assert status == expected
    # Same association, a good instance afterwards: still accepted.
    good = assoc.send_c_store(study_dir / "R-CC.dcm")
    assoc.release()
    assert good.Status == 0x0000
    quarantined = node.journal.list_quarantine()
    assert len(quarantined) == 1 and reason in quarantined[0]["reason"]
    assert quarantined[0]["status"] == expected
    stored = node.settings.data_dir / quarantined[0]["path"]
    assert stored.exists() and stored.read_bytes().endswith(payload)
    sidecar = json.loads(stored.with_suffix(".json").read_text())
    assert reason in sidecar["reason"]
    assert node.journal.find_instances_by_sop(uid) == []
    assert list(node.app.store.incoming.iterdir()) == []


def test_other_storage_classes_are_refused_in_negotiation(start_node) -> None:
    node = start_node()
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assoc = associate(node.port, [(ct, ExplicitVRLittleEndian)])
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert ct not in accepted and ct in rejected


def test_aborted_association_keeps_completed_instances(start_node, phantom_dir: Path) -> None:
    node = start_node()
    study_dir = _first_study(phantom_dir)
    assoc = associate(node.port)
    for view in ("R-CC", "R-MLO"):
        assert assoc.send_c_store(study_dir / f"{view}.dcm").Status == 0
    assoc.abort()
    uid = study_uid_of(study_dir)
    study = wait_for(lambda: node.study(uid))
    assert study.instance_count == 2
    for instance in node.journal.study_instances(uid):
        assert (node.settings.data_dir / instance.path).exists()


def test_low_disk_refuses_with_out_of_resources(start_node, phantom_dir: Path) -> None:
    node = start_node(node={"min_free_mb": 1 << 40})
    assoc = associate(node.port)
    status = assoc.send_c_store(_first_study(phantom_dir) / "R-CC.dcm")
    assoc.release()
    assert status.Status == 0xA700
    assert node.journal.counts()["instances"] == 0
    assert list(node.app.store.incoming.iterdir()) == []


def test_calling_aet_allowlist(start_node, phantom_dir: Path) -> None:
    node = start_node(dicom={"allowed_calling_aets": ["MODALITY1"]})
    refused = associate(node.port, aet="INTRUDER")
    assert refused.is_rejected
    assert associate(node.port, aet="MODALITY1").is_established
    result = run_storescu(node.port, [_first_study(phantom_dir) / "R-CC.dcm"], aet="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    assert node.journal.counts()["instances"] == 0


@pytest.mark.parametrize(("hosts", "allowed"), [(["10.20.30.0/24"], False), (["10.0.0.1", "127.0.0.0/8"], True)])
def test_host_allowlist(start_node, hosts: list[str], allowed: bool) -> None:
    node = start_node(dicom={"allowed_hosts": hosts})
    assoc = associate(node.port)
    assert assoc.is_established is allowed and assoc.is_rejected is not allowed
    if allowed:
        assoc.release()


def test_association_limit(start_node) -> None:
    node = start_node(dicom={"max_associations": 1})
    first = associate(node.port)
    assert first.is_established
    second = associate(node.port)
    assert second.is_rejected
    first.release()
    third = wait_for(lambda: (a := associate(node.port)).is_established and a, timeout=5)
    third.release()


def test_concurrent_senders_each_complete_their_study(start_node, phantom_dir: Path) -> None:
    node = start_node()
    storescu = require_tool("storescu")
    study_dirs = sorted(p for p in phantom_dir.iterdir() if p.is_dir())
    senders = [subprocess.Popen([storescu, "-aec", "MAMMO_NODE", "127.0.0.1", str(node.port),
                                 *map(str, study_files(d))], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for d in study_dirs]
    assert [p.wait(timeout=120) for p in senders] == [0] * len(study_dirs)
    for d in study_dirs:
        uid = study_uid_of(d)
        study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s)
        assert study.instance_count == 4


def test_for_presentation_is_chosen_over_for_processing_on_the_wire(start_node, tmp_path: Path) -> None:
    node = start_node()
    write_phantom_studies(tmp_path / "pres", 1, seed=21, options=PhantomOptions())
    write_phantom_studies(tmp_path / "proc", 1, seed=21, options=PhantomOptions(for_processing=True))
    pres_dir, proc_dir = next((tmp_path / "pres").iterdir()), next((tmp_path / "proc").iterdir())
    uid = study_uid_of(pres_dir)
    # The For Processing twin of R-CC, in the same study, with its own SOP Instance UID.
    twin = load(proc_dir / "R-CC.dcm")
    twin.StudyInstanceUID = uid
    twin.SOPInstanceUID = twin.SOPInstanceUID + ".9" if len(twin.SOPInstanceUID) < 62 else "2.25.4242"
    assoc = associate(node.port, [("1.2.840.10008.5.1.4.1.1.1.2.1", ExplicitVRLittleEndian),
                                  (MG_PRESENTATION, ExplicitVRLittleEndian)])
    assert assoc.send_c_store(twin).Status == 0
    for view in ("R-CC", "R-MLO", "L-CC", "L-MLO"):
        assert assoc.send_c_store(pres_dir / f"{view}.dcm").Status == 0
    assoc.release()
    study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s)
    chosen = study.selection["positions"]["R-CC"]
    assert chosen["sop_instance_uid"] == str(dcmread(pres_dir / "R-CC.dcm", stop_before_pixels=True).SOPInstanceUID)
    # assembly.accept_for_processing is off: the twin serves no position, it is an extra saying why
    assert chosen["over"] == []
    twin_extra = [e for e in study.selection["extras"] if e["sop_instance_uid"] == str(twin.SOPInstanceUID)]
    assert len(twin_extra) == 1 and "For Processing" in twin_extra[0]["why"]

"""Phantom generator: DICOM conformance (dciodvfy), determinism, anatomy, labels and report."""
from __future__ import annotations

import io
import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.tools import require_tool
from phantoms.study import (
    PHANTOM_VERSION,
    PhantomOptions,
    PhantomStudy,
    generate_study,
    sample_study,
    write_phantom_studies,
    write_study,
)
from phantoms.anatomy import (
    GLANDULAR_STEP,
    GRIDS,
    PATIENT_ORIENTATION,
    render_anatomy,
    sample_breast,
    tissue_floor,
)
from phantoms.render import render_view
from phantoms.labels import (
    _RECIPES,
    BIRADS_ORDER,
    CLOCKS,
    DENSITY_TARGETS,
    MASS_DENSITIES,
    MASS_DENSITY_FREQ,
    BreastLabels,
    Finding,
    finding_birads,
    sample_labels,
    worst_birads,
)
from phantoms.lesions import _CALC, MASS_DENSITY_CONTRAST, mass_peak
from training.data.phantom_records import ensure_phantoms, phantom_cache_name, study_records

SEED = 1
N_STUDIES = 20
VIEWS = ("R-CC", "R-MLO", "L-CC", "L-MLO")
SIDE = {"R": "right", "L": "left"}


@pytest.fixture(scope="module")
def studies() -> list[PhantomStudy]:
    """One 20-study block (the unit over which the category mix is guaranteed)."""
    return [generate_study(SEED, i) for i in range(N_STUDIES)]


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _reread(ds: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(_bytes(ds)))


def _dciodvfy(path: Path, *args: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy, which reports on stderr."""
    tool = require_tool("dciodvfy")
    proc = subprocess.run([tool, *args, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [l for l in lines if l.startswith("Error")], [l for l in lines if l.startswith("Warning")]


# ----------------------------------------------------------------------------- DICOM conformance

CONFORMANT = {
    "default": PhantomOptions(),
    "monochrome1": PhantomOptions(monochrome1=True),
    "implicit": PhantomOptions(transfer_syntax="implicit"),
    "jpeg-ls": PhantomOptions(transfer_syntax="jpeg-ls"),
    "jpeg2000": PhantomOptions(transfer_syntax="jpeg2000"),
    "rle": PhantomOptions(transfer_syntax="rle"),
    "for_processing": PhantomOptions(for_processing=True),
    "extra_views": PhantomOptions(extra_views=True),
}


@pytest.mark.parametrize("name", sorted(CONFORMANT))
def test_dciodvfy_reports_no_errors(name: str, tmp_path: Path) -> None:
    study = generate_study(SEED, 1, CONFORMANT[name])
    write_study(study, tmp_path)
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == (6 if name == "extra_views" else 4)
    for path in files:
        errors, warnings = _dciodvfy(path)
        assert errors == [], (path.name, errors)
        # The only expected warning: CC/MLO/XCCL are mammography terms, not DX defined terms.
        assert all("View Position" in w for w in warnings), warnings


def test_dciodvfy_ihe_mammo_profile_default(tmp_path: Path) -> None:
    write_study(generate_study(SEED, 2), tmp_path)
    for path in sorted(tmp_path.glob("*.dcm")):
        errors, _ = _dciodvfy(path, "-profile", "IHEMammo")
        assert errors == [], (path.name, errors)


def test_dciodvfy_deflated_after_inflating(tmp_path: Path) -> None:
    """dicom3tools as packaged cannot read Deflated files; DCMTK inflates them losslessly."""
    dcmconv = require_tool("dcmconv")
    study = generate_study(SEED, 1, PhantomOptions(transfer_syntax="deflated"))
    write_study(study, tmp_path)
    src = tmp_path / "R-MLO.dcm"
    assert pydicom.dcmread(src).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    out = tmp_path / "inflated.dcm"
    subprocess.run([dcmconv, "+te", str(src), str(out)], check=True, timeout=60)
    errors, _ = _dciodvfy(out)
    assert errors == []


@pytest.mark.parametrize("options, missing", [
    (PhantomOptions(laterality_attr="series"), "ImageLaterality"),
    (PhantomOptions(view_codes=False), "ViewCodeSequence"),
])
def test_vendor_variants_fail_only_for_the_documented_reason(options: PhantomOptions, missing: str,
                                                             tmp_path: Path) -> None:
    study = generate_study(SEED, 1, options)
    write_study(study, tmp_path)
    errors, _ = _dciodvfy(tmp_path / "L-CC.dcm")
    assert errors and all(missing in e for e in errors), errors
    ds = study.views["L-CC"]
    if missing == "ImageLaterality":
        assert "ImageLaterality" not in ds and ds.Laterality == "L"
    else:
        assert "ViewCodeSequence" not in ds and ds.ViewPosition == "CC"


def test_full_size_study(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    study = generate_study(SEED, 3, PhantomOptions(size="full"))
    elapsed = time.perf_counter() - t0
    assert elapsed < 40.0  # about 2 s on one core; only gross regressions fail here
    write_study(study, tmp_path)
    ds = pydicom.dcmread(tmp_path / "R-MLO.dcm")
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (3328, 2560, 16, 14, 13)
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.07, 0.07]
    assert int(ds.pixel_array.max()) <= (1 << 14) - 1
    errors, _ = _dciodvfy(tmp_path / "R-MLO.dcm")
    assert errors == []
    # Same anatomy as the small size: the dense fraction is a property of the phantom.
    small = generate_study(SEED, 3)
    for side in "RL":
        assert study.labels["breasts"][side]["dense_fraction"] == pytest.approx(
            small.labels["breasts"][side]["dense_fraction"], abs=0.01)


def test_both_sizes_show_the_same_masses() -> None:
    """Mass boxes (mm from the chest-wall edge, and from the top) agree between the sizes."""
    full, small = generate_study(SEED, 20, PhantomOptions(size="full")), generate_study(SEED, 20)
    checked = 0
    for side in "RL":
        for a, b in zip(full.labels["breasts"][side]["findings"], small.labels["breasts"][side]["findings"]):
            assert {k: a[k] for k in a if k != "boxes"} == {k: b[k] for k in b if k != "boxes"}
            for key, box in a["boxes"].items():
                mm = []
                for labels, bx in ((full.labels, box), (small.labels, b["boxes"][key])):
                    ps, width = labels["pixel_spacing_mm"], labels["views"][key]["columns"] * labels["pixel_spacing_mm"]
                    x0, y0, x1, y1 = (v * ps for v in bx)
                    mm.append(np.array([width - x1, y0, width - x0, y1] if side == "R" else [x0, y0, x1, y1]))
                assert np.abs(mm[0] - mm[1]).max() < 1.5, (key, a["id"], mm)
                checked += a["kind"] == "mass"
    assert checked >= 2


def test_small_size_attributes(studies: list[PhantomStudy]) -> None:
    ds = _reread(studies[0].views["L-MLO"])
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (512, 416, 16, 12, 0)
    assert ds.Modality == "MG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
    assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.ImageType == ["ORIGINAL", "PRIMARY"]
    assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
    assert ds.BreastImplantPresent == "NO" and ds.BurnedInAnnotation == "NO"
    assert int(ds.pixel_array.max()) <= 4095


def test_view_codes_orientation_and_uids(studies: list[PhantomStudy]) -> None:
    study = studies[0]
    expected = {"CC": "399162004", "MLO": "399368009"}
    series = {ds.SeriesInstanceUID for ds in study.views.values()}
    assert len(series) == 1
    assert len({ds.SOPInstanceUID for ds in study.views.values()}) == 4
    assert sorted(int(ds.InstanceNumber) for ds in study.views.values()) == [1, 2, 3, 4]
    for key, ds in study.views.items():
        side, view = key.split("-")
        assert ds.ImageLaterality == side and ds.ViewPosition == view
        assert ds.ViewCodeSequence[0].CodeValue == expected[view]
        assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert list(ds.PatientOrientation) == list(PATIENT_ORIENTATION[(side, view)])
        assert ds.StudyInstanceUID == study.study_uid
        assert str(ds.SOPInstanceUID).startswith("2.25.")


def test_extra_views_have_modifier_codes() -> None:
    study = generate_study(SEED, 0, PhantomOptions(extra_views=True))
    assert len(study.extras) == 2
    spot = next(k for k in study.extras if k.endswith("-CC-SPOT"))
    xccl = next(k for k in study.extras if k.endswith("-XCCL"))
    assert spot[0] != xccl[0]
    sds, xds = study.extras[spot], study.extras[xccl]
    assert sds.ViewCodeSequence[0].CodeValue == "399162004"
    assert [m.CodeValue for m in sds.ViewCodeSequence[0].ViewModifierCodeSequence] == ["399055006"]
    assert xds.ViewCodeSequence[0].CodeValue == "399192008"
    assert len(xds.ViewCodeSequence[0].ViewModifierCodeSequence) == 0
    assert list(xds.PatientOrientation) == list(PATIENT_ORIENTATION[(xccl[0], "CC")])
    # Exaggerated laterally: lateral tissue (and a sliver of pectoral) reaches the top edge.
    corner = xds.pixel_array[:10, -10:] if xccl[0] == "R" else xds.pixel_array[:10, :10]
    assert corner.mean() > 0.2 * 4095
    assert set(study.labels["extras"]) == {spot, xccl}
    assert study.labels["extras"][spot]["modifiers"] == ["spot_compression"]
    # A spot view is centred on the finding that prompted it.
    lead = study.labels["breasts"][spot[0]]["findings"][0]
    assert spot in lead["boxes"]


def test_for_processing_variant() -> None:
    ds = generate_study(SEED, 0, PhantomOptions(for_processing=True)).views["R-CC"]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1"
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in ds and "SourceImageSequence" not in ds
    presentation = generate_study(SEED, 0).views["R-CC"]
    # The For Presentation image references exactly this For Processing instance.
    assert presentation.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


# ----------------------------------------------------------------------------- determinism, encodings

def test_same_seed_gives_identical_bytes() -> None:
    a, b = generate_study(7, 2), generate_study(7, 2)
    for key in VIEWS:
        assert _bytes(a.views[key]) == _bytes(b.views[key])
    assert a.labels == b.labels and a.report == b.report


def test_different_seed_or_index_gives_different_study() -> None:
    a, b, c = generate_study(7, 2), generate_study(8, 2), generate_study(7, 3)
    for other in (b, c):
        assert other.study_uid != a.study_uid
        assert other.labels["patient_id"] != a.labels["patient_id"]
        assert other.labels["accession_number"] != a.labels["accession_number"]
        for key in VIEWS:
            assert other.views[key].SOPInstanceUID != a.views[key].SOPInstanceUID
            assert not np.array_equal(other.views[key].pixel_array, a.views[key].pixel_array)


def test_monochrome1_is_inverted_monochrome2() -> None:
    m2 = generate_study(SEED, 4).views["L-MLO"]
    m1 = generate_study(SEED, 4, PhantomOptions(monochrome1=True)).views["L-MLO"]
    assert m1.PhotometricInterpretation == "MONOCHROME1" and m2.PhotometricInterpretation == "MONOCHROME2"
    assert m1.PresentationLUTShape == "INVERSE" and m2.PresentationLUTShape == "IDENTITY"
    maxv = (1 << int(m2.BitsStored)) - 1
    a1, a2 = _reread(m1).pixel_array.astype(np.int32), _reread(m2).pixel_array.astype(np.int32)
    assert np.array_equal(a1, maxv - a2)
    assert float(m1.WindowCenter) == pytest.approx(maxv - float(m2.WindowCenter), abs=1)
    assert m1.SOPInstanceUID != m2.SOPInstanceUID  # different content, different instance


@pytest.mark.parametrize("syntax", ["implicit", "deflated", "jpeg-ls", "jpeg2000", "rle"])
def test_encoded_variants_decode_to_the_same_pixels(syntax: str) -> None:
    ref = generate_study(SEED, 5)
    enc = generate_study(SEED, 5, PhantomOptions(transfer_syntax=syntax))
    uid = {"implicit": pydicom.uid.ImplicitVRLittleEndian, "deflated": pydicom.uid.DeflatedExplicitVRLittleEndian,
           "jpeg-ls": pydicom.uid.JPEGLSLossless, "jpeg2000": pydicom.uid.JPEG2000Lossless,
           "rle": pydicom.uid.RLELossless}[syntax]
    for key in ("R-CC", "L-MLO"):
        ds = _reread(enc.views[key])
        assert ds.file_meta.TransferSyntaxUID == uid
        assert ds.SOPInstanceUID == ref.views[key].SOPInstanceUID  # a lossless re-encoding is the same instance
        assert np.array_equal(ds.pixel_array, _reread(ref.views[key]).pixel_array)


def test_options_are_validated() -> None:
    for bad in ({"size": "huge"}, {"transfer_syntax": "jpeg-lossy"}, {"laterality_attr": "frame"}):
        with pytest.raises(ValueError):
            PhantomOptions(**bad)
    with pytest.raises(ValueError):
        generate_study(-1, 0)


# ----------------------------------------------------------------------------- anatomy

def _breast(density: str, seed: int) -> tuple:
    lo, hi = DENSITY_TARGETS[density]
    labels = BreastLabels("L", density, (lo + hi) / 2, [])
    return sample_breast(np.random.default_rng([seed, 99]), labels, 45.0)


def test_dense_fraction_and_brightness_rise_with_density_class() -> None:
    grid = GRIDS["small"]
    fractions, brightness = [], []
    for density in "ABCD":
        f, b = [], []
        for seed in range(3):
            render = render_view(_breast(density, seed), "CC", [], grid)
            f.append(render.dense_fraction)
            b.append(float(render.image[render.breast_mask].mean()))
        fractions.append(np.mean(f))
        brightness.append(np.mean(b))
    assert all(x < y for x, y in zip(fractions, fractions[1:])), fractions
    assert all(x < y for x, y in zip(brightness, brightness[1:])), brightness
    assert fractions[0] < 0.2 and fractions[-1] > 0.6


def test_labelled_dense_fraction_matches_its_class(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for side in "RL":
            b = study.labels["breasts"][side]
            lo, hi = DENSITY_TARGETS[b["density"]]
            assert lo - 0.03 <= b["dense_fraction"] <= hi + 0.03, (side, b)


def test_pectoral_muscle_only_in_mlo() -> None:
    model = _breast("A", 3)
    grid = GRIDS["small"]
    cc, mlo = render_view(model, "CC", [], grid), render_view(model, "MLO", [], grid)
    assert not cc.pectoral_mask.any()
    assert mlo.pectoral_mask.sum() > 0.02 * mlo.breast_mask.sum()
    fat = mlo.breast_mask & ~mlo.pectoral_mask
    assert mlo.image[mlo.pectoral_mask].mean() > mlo.image[fat].mean() + 0.05
    # Left breast: chest wall on the left edge, so the muscle sits in the upper-left corner.
    rows, cols = np.nonzero(mlo.pectoral_mask)
    assert rows.min() == 0 and cols.min() == 0 and cols.max() < grid.cols // 2


def test_chest_wall_side_follows_laterality(studies: list[PhantomStudy]) -> None:
    """R images: chest wall on the right edge, nipple pointing left (PatientOrientation P\\..)."""
    for study in studies[:5]:
        for key, ds in study.views.items():
            a = ds.pixel_array.astype(float)
            left, right = a[:, :3].mean(), a[:, -3:].mean()
            if key.startswith("R"):
                assert right > 3 * left and ds.PatientOrientation[0] == "P", key
            else:
                assert left > 3 * right and ds.PatientOrientation[0] == "A", key
        # The pectoral muscle makes the upper chest-wall corner tissue in MLO, air in CC.
        for side in "RL":
            corner = (slice(0, 15), slice(-15, None) if side == "R" else slice(0, 15))
            mlo = study.views[f"{side}-MLO"].pixel_array[corner].mean()
            cc = study.views[f"{side}-CC"].pixel_array[corner].mean()
            assert mlo > 0.2 * 4095 > cc


# ----------------------------------------------------------------------------- findings and boxes

def _all_findings(study: PhantomStudy):
    for side in "RL":
        for f in study.labels["breasts"][side]["findings"]:
            yield side, f


def test_boxes_inside_image_and_over_breast(studies: list[PhantomStudy]) -> None:
    n = 0
    for study in studies:
        for side, f in _all_findings(study):
            expected = {f"{side}-CC", f"{side}-MLO"}
            if f["kind"] == "asymmetry" and f["subtype"] == "asymmetry":
                assert len(f["boxes"]) == 1 and set(f["boxes"]) < expected  # one view only, by definition
            else:
                assert set(f["boxes"]) == expected
            for key, (x0, y0, x1, y1) in f["boxes"].items():
                a = study.views[key].pixel_array
                rows, cols = a.shape
                assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows, (key, f)
                box = a[y0:y1, x0:x1]
                assert (box > 0.08 * 4095).mean() > 0.9, (key, f["id"])  # breast tissue, not air
                assert a[(y0 + y1) // 2, (x0 + x1) // 2] > 0.08 * 4095
                n += 1
    assert n >= 10


def _nipple(pixels: np.ndarray, side: str) -> tuple[float, float]:
    tissue = pixels > 0.08 * 4095
    cols = np.nonzero(tissue.any(axis=0))[0]
    tip = cols.min() if side == "R" else cols.max()
    return float(tip), float(np.nonzero(tissue[:, tip])[0].mean())


def test_findings_are_geometrically_consistent_between_views() -> None:
    """Same distance from the nipple in CC and MLO; vertical side set by the quadrant
    (CC: lateral at the top; MLO: superolateral at the top)."""
    checked = 0
    spacing = GRIDS["small"].spacing_mm
    for index in range(40):
        study = generate_study(11, index)
        for side, f in _all_findings(study):
            if len(f["boxes"]) != 2:
                continue
            pos = {}
            for view in ("CC", "MLO"):
                key = f"{side}-{view}"
                tip_x, tip_y = _nipple(study.views[key].pixel_array, side)
                x0, y0, x1, y1 = f["boxes"][key]
                pos[view] = (abs((x0 + x1) / 2 - tip_x) * spacing, (tip_y - (y0 + y1) / 2) * spacing)
            assert abs(pos["CC"][0] - pos["MLO"][0]) < 15.0, (index, f)
            quadrant = f["location"]["quadrant"]
            up_cc, up_mlo = pos["CC"][1], pos["MLO"][1]
            if quadrant == "UOQ":
                assert up_cc > 0 and up_mlo > 0, (index, f, pos)
            elif quadrant == "LIQ":
                assert up_cc < 0 and up_mlo < 0, (index, f, pos)
            elif quadrant == "LOQ":
                assert up_cc > 0, (index, f, pos)
            elif quadrant == "UIQ":
                assert up_cc < 0, (index, f, pos)
            checked += 1
    assert checked >= 20


def test_locations_are_consistent(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for side, f in _all_findings(study):
            loc = f["location"]
            assert loc["depth"] in ("anterior", "middle", "posterior")
            if loc["quadrant"] in CLOCKS[side]:
                assert loc["clock"] in CLOCKS[side][loc["quadrant"]]
            else:
                assert loc["quadrant"] in ("central", "subareolar") and loc["clock"] is None
            assert f["size_mm"] > 0


# ----------------------------------------------------------------------------- BI-RADS rules

@pytest.mark.parametrize("kind, descriptors, expected", [
    ("mass", {"shape": "oval", "margin": "circumscribed"}, "3"),
    ("mass", {"shape": "round", "margin": "obscured"}, "4A"),
    ("mass", {"shape": "oval", "margin": "indistinct"}, "4B"),
    ("mass", {"shape": "irregular", "margin": "circumscribed"}, "4B"),
    ("mass", {"shape": "irregular", "margin": "indistinct"}, "4C"),
    ("mass", {"shape": "irregular", "margin": "spiculated"}, "5"),
    ("mass", {"shape": "irregular", "margin": "spiculated", "density": "high"}, "5"),
    ("mass", {"shape": "oval", "margin": "circumscribed", "density": "low"}, "3"),
    ("mass", {"shape": "oval", "margin": "circumscribed", "density": "fat_containing"}, "2"),
    ("mass", {"shape": "round", "margin": "circumscribed", "density": "fat_containing"}, "2"),
    ("calcification", {"morphology": "round", "distribution": "diffuse"}, "2"),
    ("calcification", {"morphology": "punctate", "distribution": "grouped"}, "3"),
    ("calcification", {"morphology": "amorphous", "distribution": "regional"}, "4A"),
    ("calcification", {"morphology": "fine_pleomorphic", "distribution": "grouped"}, "4C"),
    ("calcification", {"morphology": "fine_linear_branching", "distribution": "segmental"}, "5"),
    ("architectural_distortion", {}, "4B"),
    ("asymmetry", {"subtype": "asymmetry"}, "0"),
    ("asymmetry", {"subtype": "focal_asymmetry"}, "3"),
])
def test_birads_rules(kind: str, descriptors: dict, expected: str) -> None:
    assert finding_birads(kind, descriptors) == expected


def test_breast_birads_follows_findings(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for side in "RL":
            b = study.labels["breasts"][side]
            for f in b["findings"]:
                desc = {k: f[k] for k in ("shape", "margin", "density", "morphology", "distribution", "subtype")
                        if k in f}
                assert f["birads"] == finding_birads(f["kind"], desc)
            assert b["birads"] == worst_birads([f["birads"] for f in b["findings"]])
            assert b["birads"] in BIRADS_ORDER and b["birads"] != "6"


def test_category_mix_of_a_twenty_study_block() -> None:
    for seed in (1, 2):
        overall = [worst_birads([b.birads for b in sample_labels(seed, i).values()]) for i in range(20)]
        assert set(overall) == set(BIRADS_ORDER), overall
        assert sum(c in ("1", "2") for c in overall) >= 11  # mostly normal or benign


# ----------------------------------------------------------------------------- mass density (version 2)

def _masses(seeds: range, n: int = 40):
    """(seed, index, finding) of every mass of the first n studies of each seed (labels only)."""
    for seed in seeds:
        for index in range(n):
            for b in sample_labels(seed, index).values():
                for f in b.findings:
                    if f.kind == "mass":
                        yield seed, index, f


def mass_core_share(seed: int, index: int, f: Finding, view: str) -> tuple[float, str] | None:
    """Share of the mass's core pixels brighter than the 95th percentile of the normal breast
    tissue of the same image, and the breast's ACR class (None when the view lacks the mass).

    The core is where the mass's contribution (the image with it minus the image without it;
    the noise does not depend on the findings) exceeds half its largest magnitude, inside its
    box. Normal tissue: breast minus pectoral muscle minus every finding's box.
    """
    breasts, models, _ = sample_study(seed, index)
    side, grid = f.laterality, GRIDS["small"]
    full = render_view(models[side], view, breasts[side].findings, grid)
    if f.id not in full.boxes:
        return None
    empty = render_view(models[side], view, [], grid)
    one = render_view(models[side], view, [f], grid)
    normal = empty.breast_mask & ~empty.pectoral_mask
    for x0, y0, x1, y1 in full.boxes.values():
        normal[y0:y1, x0:x1] = False
    p95 = float(np.percentile(empty.image[normal], 95))
    x0, y0, x1, y1 = full.boxes[f.id]
    contribution = (one.image - empty.image)[y0:y1, x0:x1]
    core = np.abs(contribution) > 0.5 * float(np.abs(contribution).max())
    return float((full.image[y0:y1, x0:x1][core] > p95).mean()), breasts[side].density


def test_every_mass_has_a_density_descriptor_from_its_category() -> None:
    counts: dict[str, dict[str, int]] = {}
    for _, _, f in _masses(range(1, 11)):
        d = f.descriptors["density"]
        assert d in MASS_DENSITIES, f.descriptors
        if d == "fat_containing":
            assert f.birads == "2" and f.descriptors["margin"] == "circumscribed", f.descriptors
        else:
            assert f.birads != "2", f.descriptors
        counts.setdefault(f.birads, {}).setdefault(d, 0)
        counts[f.birads][d] += 1
    assert set(counts) >= {"2", "3", "4A", "4B", "4C", "5"}, counts
    # Suspicious (4C/5) masses are mostly high density, probably benign ones mostly not.
    for cat in ("4C", "5"):
        assert max(MASS_DENSITY_FREQ[cat], key=MASS_DENSITY_FREQ[cat].get) == "high"
    assert MASS_DENSITY_FREQ["3"]["high"] < 0.3 and MASS_DENSITY_FREQ["5"]["low"] < 0.05
    susp = sum(counts.get(c, {}).get("high", 0) for c in ("4C", "5"))
    assert susp > 0.5 * sum(sum(counts.get(c, {}).values()) for c in ("4C", "5")), counts
    for freq in MASS_DENSITY_FREQ.values():
        assert sum(freq.values()) == pytest.approx(1.0)
    # Fat-containing masses are a benign (BI-RADS 2) recipe, never a probably-benign or worse one.
    fat = [d for cat, recipes in _RECIPES.items() for kind, d in recipes if d.get("density") == "fat_containing"]
    assert fat and all(finding_birads("mass", d) == "2" for d in fat)
    assert all(d.get("density") != "fat_containing" for cat, r in _RECIPES.items() if cat != "2" for _, d in r)


def test_mass_contrast_is_set_against_the_glandular_step() -> None:
    """High density out-weighs the fully glandular step, equal matches it, low stays below,
    and a longer chord (bigger mass) is brighter within each descriptor."""
    ref = 15.0
    assert mass_peak(MASS_DENSITY_CONTRAST["high"][0], ref) > 1.2 * GLANDULAR_STEP
    lo, hi = MASS_DENSITY_CONTRAST["equal"]
    assert lo * GLANDULAR_STEP <= mass_peak(1.0, ref) <= hi * GLANDULAR_STEP
    assert mass_peak(MASS_DENSITY_CONTRAST["low"][1], ref) < 0.75 * GLANDULAR_STEP
    assert mass_peak(1.5, 25.0) > mass_peak(1.5, 10.0)


def test_high_density_masses_outshine_normal_tissue_low_density_do_not() -> None:
    shares: dict[str, list[float]] = {"high": [], "low": []}
    for seed, index, f in _masses(range(1, 8)):
        d = f.descriptors["density"]
        if d not in shares or len(shares[d]) >= 12:
            continue
        for view in f.seen_in:
            got = mass_core_share(seed, index, f, view)
            if got is not None:
                shares[d].append(got[0])
        if all(len(v) >= 12 for v in shares.values()):
            break
    high, low = np.array(shares["high"]), np.array(shares["low"])
    assert len(high) >= 10 and len(low) >= 10, shares
    assert high.mean() > 0.75 and (high > 0.5).mean() >= 0.8, shares
    assert low.mean() < 0.35 and (low > 0.5).mean() <= 0.25, shares


def test_fat_containing_masses_have_a_darker_centre_than_their_rim() -> None:
    checked = 0
    for seed, index, f in _masses(range(1, 6)):
        if f.descriptors["density"] != "fat_containing":
            continue
        assert f.birads == "2"
        breasts, models, _ = sample_study(seed, index)
        for view in f.seen_in:
            grid = GRIDS["small"]
            one = render_view(models[f.laterality], view, [f], grid)
            empty = render_view(models[f.laterality], view, [], grid)
            x0, y0, x1, y1 = one.boxes[f.id]
            c = (one.image - empty.image)[y0:y1, x0:x1]
            img = one.image[y0:y1, x0:x1]
            h, w = c.shape
            centre = (slice(h // 2 - h // 6, h // 2 + h // 6 + 1), slice(w // 2 - w // 6, w // 2 + w // 6 + 1))
            rim = c > 0.5 * c.max()
            # Radiolucent: the centre adds at most the capsule's front and back walls.
            assert c[centre].mean() < 0.3 * c.max(), (seed, index, view)
            assert img[rim].mean() > img[centre].mean() + 0.02, (seed, index, view)
            # Never takes a pixel below fat (plus muscle): the floor, the background 0.03 and
            # the noise (at most 0.011, the same in both renders).
            floor = tissue_floor(models[f.laterality].shape(view), grid.spacing_mm,
                                 (np.arange(grid.rows) + 0.5) * grid.spacing_mm,
                                 (np.arange(grid.cols) + 0.5) * grid.spacing_mm)
            floor = (floor[:, ::-1] if f.laterality == "R" else floor)[y0:y1, x0:x1]
            background = empty.image[y0:y1, x0:x1]
            assert (c >= np.minimum(0.0, floor + 0.03 - background) - 0.011).all(), (seed, index, view)
            checked += 1
        study = generate_study(seed, index)
        (label,) = [x for x in study.labels["breasts"][f.laterality]["findings"] if x["id"] == f.id]
        assert label["density"] == "fat_containing" and label["birads"] == "2"
        assert "fat-containing mass" in study.report
        if checked >= 6:
            break
    assert checked >= 4


def test_per_view_birads_of_a_one_view_asymmetry(tmp_path: Path) -> None:
    for index in range(N_STUDIES):
        breasts = sample_labels(SEED, index)
        lone = [f for b in breasts.values() for f in b.findings
                if f.kind == "asymmetry" and f.descriptors["subtype"] == "asymmetry"]
        if lone:
            break
    else:
        pytest.fail("no one-view asymmetry in the block")
    f = lone[0]
    study = generate_study(SEED, index)
    side, (seen,) = f.laterality, f.seen_in
    other = "MLO" if seen == "CC" else "CC"
    views, breast = study.labels["views"], study.labels["breasts"][side]
    assert breast["birads"] == "0"                                    # the breast keeps its category
    assert views[f"{side}-{seen}"]["birads"] == "0"
    rest = [x["birads"] for x in breast["findings"] if f"{side}-{other}" in x["visible_in"]]
    assert views[f"{side}-{other}"]["birads"] == worst_birads(rest) != "0"
    write_study(study, tmp_path)
    records = {f"{r.laterality}-{r.view}": r for r in study_records(tmp_path)}
    assert records[f"{side}-{seen}"].birads == 0 and records[f"{side}-{other}"].birads != 0


def test_per_view_birads_is_the_worst_visible_finding(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for key, view in study.labels["views"].items():
            breast = study.labels["breasts"][key[0]]
            assert view["birads"] == worst_birads([f["birads"] for f in breast["findings"] if key in f["visible_in"]])
            assert birads_rank_le(view["birads"], breast["birads"])


def birads_rank_le(a: str, b: str) -> bool:
    return BIRADS_ORDER.index(a) <= BIRADS_ORDER.index(b)


def test_records_fall_back_to_the_breast_category_without_per_view_birads(tmp_path: Path) -> None:
    write_study(generate_study(SEED, 3), tmp_path)
    path = tmp_path / "labels.json"
    labels = json.loads(path.read_text())
    for view in labels["views"].values():
        del view["birads"]
    path.write_text(json.dumps(labels))
    from models.package.labels import birads_index
    for r in study_records(tmp_path):
        assert r.birads == birads_index(labels["breasts"][r.laterality]["birads"])


def test_phantom_version_in_labels_dicom_and_cache_name(tmp_path: Path) -> None:
    assert PHANTOM_VERSION == 2
    study = generate_study(SEED, 0)
    assert study.labels["phantom_version"] == PHANTOM_VERSION
    assert study.views["R-CC"].SoftwareVersions == f"phantom-{PHANTOM_VERSION}"
    assert phantom_cache_name(6, 3, "small") == f"phantoms-v{PHANTOM_VERSION}-3-6-small"
    stale = tmp_path / "phantoms-3-1-small"          # a version-1 cache folder is not reused
    stale.mkdir()
    root = ensure_phantoms(tmp_path, 1, 3, "small")
    assert root.name == f"phantoms-v{PHANTOM_VERSION}-3-1-small" and root != stale
    labels = json.loads((root / "study-0000" / "labels.json").read_text())
    assert labels["phantom_version"] == PHANTOM_VERSION and "birads" in labels["views"]["L-CC"]


def test_calcification_recipes_follow_the_birads_atlas() -> None:
    """Sizes and group counts of the particle table against the BI-RADS Atlas 5th ed."""
    diam = {m: spec[1] for m, spec in _CALC.items()}
    assert diam["punctate"][1] < 0.5 and diam["round"][0] >= 0.5
    assert 0.5 <= diam["coarse_heterogeneous"][0] and diam["coarse_heterogeneous"][1] <= 1.0
    assert diam["fine_pleomorphic"][1] < 0.5 and diam["fine_linear_branching"][1] < 0.5
    for morph, (counts, _, _, _) in _CALC.items():
        if "grouped" in counts and morph != "coarse":   # a coarse "popcorn" clump is drawn as 5 particles
            assert counts["grouped"][0] >= 5, morph


# ----------------------------------------------------------------------------- report

def _sections(report: str) -> tuple[str, str]:
    assert report.count("FINDINGS:") == 1 and report.count("IMPRESSION:") == 1
    assert report.startswith("FINDINGS:")
    findings, impression = report.split("IMPRESSION:")
    return findings, impression


def test_report_matches_labels(studies: list[PhantomStudy]) -> None:
    composition = {"A": "almost entirely fatty", "B": "scattered areas of fibroglandular density",
                   "C": "heterogeneously dense", "D": "extremely dense"}
    for study in studies:
        findings, impression = _sections(study.report)
        sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", findings) if s.strip()]
        breasts = study.labels["breasts"]
        assert composition[breasts["R"]["density"]] in findings
        for side, f in _all_findings(study):
            words = {"mass": "mass", "calcification": "calcifications",
                     "architectural_distortion": "architectural distortion", "asymmetry": "asymmetry"}[f["kind"]]
            descriptor = (f.get("shape") or f.get("morphology") or f.get("subtype") or "").replace("_", " ")
            diffuse = f["kind"] == "calcification" and f["distribution"] == "diffuse"
            size = "" if diffuse else f"{round(f['size_mm'])} mm"
            hits = [s for s in sentences if f"{SIDE[side]} breast" in s.lower() and words in s.lower()
                    and descriptor in s.lower() and size in s and not s.lower().startswith("no suspicious")]
            assert len(hits) >= 1, (f, sentences)
            if not diffuse:
                assert f"{f['location']['depth']} depth" in hits[0]
                if f["location"]["clock"] is not None:
                    assert f"at {f['location']['clock']} o'clock" in hits[0]
        for side in "RL":
            m = re.search(rf"^{SIDE[side].capitalize()} breast: BI-RADS (\w+) - ", impression, re.M)
            assert m and m.group(1) == breasts[side]["birads"], impression
            if not breasts[side]["findings"]:  # an explicit negative for a clean breast
                assert any("no suspicious masses, calcifications, or architectural distortion" in s.lower()
                           and f"{SIDE[side]} breast" in s for s in sentences), sentences
        overall = worst_birads([breasts[s]["birads"] for s in "RL"])
        assert f"Overall: BI-RADS {overall} - " in impression
        assert "BIRADS" not in study.report and "Bi-RADS" not in study.report


def test_report_phrasing_varies_but_is_deterministic(studies: list[PhantomStudy]) -> None:
    first_lines = {s.report.splitlines()[1] for s in studies}
    assert len(first_lines) > 1
    assert generate_study(SEED, 0).report == studies[0].report


# ----------------------------------------------------------------------------- writing

def test_write_phantom_studies_layout(tmp_path: Path) -> None:
    calls: list[int] = []
    dirs = write_phantom_studies(tmp_path / "out", 2, 3, progress=calls.append)
    assert calls == [1, 1]
    assert dirs == [tmp_path / "out" / "study-0000", tmp_path / "out" / "study-0001"]
    for index, d in enumerate(dirs):
        names = sorted(p.name for p in d.iterdir())
        assert names == ["L-CC.dcm", "L-MLO.dcm", "R-CC.dcm", "R-MLO.dcm", "labels.json", "report.txt"]
        labels = json.loads((d / "labels.json").read_text())
        assert (labels["seed"], labels["index"], labels["size"]) == (3, index, "small")
        assert set(labels["views"]) == set(VIEWS) and labels["extras"] == {}
        for key, entry in labels["views"].items():
            ds = pydicom.dcmread(d / entry["file"])
            assert entry["file"] == f"{key}.dcm"
            assert ds.SOPInstanceUID == entry["sop_instance_uid"]
            assert ds.StudyInstanceUID == labels["study_uid"]
            assert ds.PatientID == labels["patient_id"] and ds.AccessionNumber == labels["accession_number"]
        assert set(labels["breasts"]) == {"R", "L"}
        assert (d / "report.txt").read_text().startswith("FINDINGS:")
    assert write_phantom_studies(tmp_path / "empty", 0, 3) == []


def test_a_set_extended_past_its_end_holds_the_larger_sets_studies(tmp_path: Path) -> None:
    """Studies 2..3 written with ``start=2`` are byte for byte the last two of a 4-study set."""
    full = write_phantom_studies(tmp_path / "full", 4, 3)
    tail = write_phantom_studies(tmp_path / "tail", 2, 3, start=2)
    assert [d.name for d in tail] == ["study-0002", "study-0003"]
    for d in tail:
        for f in ("labels.json", "report.txt", "R-CC.dcm"):
            assert (d / f).read_bytes() == (tmp_path / "full" / d.name / f).read_bytes()
    assert full[2].name == "study-0002"
    assert phantom_cache_name(2, 3, "small", start=4) == f"phantoms-v{PHANTOM_VERSION}-3-4+2-small"
    with pytest.raises(ValueError):
        write_phantom_studies(tmp_path / "bad", 1, 3, start=-1)


def test_extra_training_studies_join_train_and_move_no_held_out_study(tmp_path: Path) -> None:
    from training.config import DataSection
    from training.data.records import load_records

    base = DataSection(phantom_studies=8, cache_dir=tmp_path, val_fraction=0.25, test_fraction=0.25)
    before = {(r.study_id, r.laterality, r.view): r.split for r in load_records(base)}
    more = load_records(base.model_copy(update={"phantom_extra_train_studies": 3}))
    after = {(r.study_id, r.laterality, r.view): r.split for r in more}
    assert {k: after[k] for k in before} == before                # every first-set split unchanged
    added = {k[0] for k in set(after) - set(before)}
    assert len(added) == 3 and {after[k] for k in after if k[0] in added} == {"train"}
    assert {r.patient_id for r in more if r.study_id in added}.isdisjoint(
        {r.patient_id for r in more if r.study_id not in added})
    assert (tmp_path / phantom_cache_name(3, 0, "small", start=8)).is_dir()
    with pytest.raises(ValueError, match="generated phantoms"):
        load_records(base.model_copy(update={"phantom_extra_train_studies": 1, "root": tmp_path}))


def test_extras_written_with_their_keys(tmp_path: Path) -> None:
    study = generate_study(SEED, 0, PhantomOptions(extra_views=True))
    write_study(study, tmp_path)
    for key in study.extras:
        assert (tmp_path / f"{key}.dcm").is_file()
        assert json.loads((tmp_path / "labels.json").read_text())["extras"][key]["file"] == f"{key}.dcm"


def test_small_images_render_quickly() -> None:
    model = _breast("C", 1)
    render_anatomy(model, "MLO", GRIDS["small"])  # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        render_view(model, "MLO", [], GRIDS["small"])
    assert (time.perf_counter() - t0) / 5 < 0.5  # about 0.03 s; only gross regressions fail here


def test_replace_keeps_options_frozen() -> None:
    options = PhantomOptions()
    with pytest.raises(Exception):
        options.size = "full"  # type: ignore[misc]
    assert replace(options, size="full").content_key() != options.content_key()
    assert replace(options, transfer_syntax="rle").content_key() == options.content_key()


# ----------------------------------------------------------------------------- measurement (docs)

def mass_core_table(seeds: range, n: int = 40) -> str:
    """The docs/phantom.md calibration table: mean share of mass-core pixels above the normal
    tissue's 95th percentile (mass_core_share), per mass density and ACR class (views counted
    one by one)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for seed, index, f in _masses(seeds, n):
        for view in f.seen_in:
            got = mass_core_share(seed, index, f, view)
            if got is None:
                continue
            share, acr = got
            for key in ((f.descriptors["density"], acr), (f.descriptors["density"], "all"), ("all", acr), ("all", "all")):
                groups.setdefault(key, []).append(share)
    lines = ["| mass density | A | B | C | D | all |", "|---|---|---|---|---|---|"]
    for density in (*MASS_DENSITIES, "all"):
        cells = [f"{np.mean(v):.2f} ({len(v)})" if (v := groups.get((density, acr))) else "–"
                 for acr in ("A", "B", "C", "D", "all")]
        lines.append(f"| {density} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.training.test_phantom [studies per seed] [seeds]
    import sys

    print(mass_core_table(range(1, 1 + (int(sys.argv[2]) if len(sys.argv) > 2 else 1)),
                          int(sys.argv[1]) if len(sys.argv) > 1 else 40))

"""training.data: records (phantom, VinDr layout, CSV manifest), splits, cache, dataset."""
from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from torch.utils.data import DataLoader

from models.package.labels import FINDING_CLASSES, birads_index, density_index
from models.preprocess import PreprocessConfig, normalize, prepare_uint8
from training.config import DataSection
from training.data.cache import PreprocessedCache
from training.data.datasets import MammoImageDataset
from training.data.manifest import manifest_records
from phantoms.study import PhantomOptions, write_phantom_studies
from training.data.phantom_records import phantom_records
from training.data.image_record import ImageRecord
from training.data.records import load_records
from training.data.splits import assign_splits
from training.data.vindr import parse_categories, vindr_records

SEED = 4
N_STUDIES = 20
F = {name: i for i, name in enumerate(FINDING_CLASSES)}


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 small studies: one full case-mix block (every BI-RADS category)."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_studies(root, N_STUDIES, SEED, PhantomOptions())
    return root


# ------------------------------------------------------------------------------ phantom records

def test_phantom_records_labels(phantom_root: Path) -> None:
    records = phantom_records(phantom_root)
    assert len(records) == 4 * N_STUDIES
    assert all(r.path.exists() and r.view in ("CC", "MLO") and r.split is None for r in records)
    kinds_seen = set()
    for r in records:
        labels = json.loads((r.path.parent / "labels.json").read_text())
        key = f"{r.laterality}-{r.view}"
        breast = labels["breasts"][r.laterality]
        assert r.study_id == labels["study_uid"] and r.patient_id == labels["patient_id"]
        assert r.birads == birads_index(labels["views"][key]["birads"]) and r.density == density_index(breast["density"])
        expected = set()
        for f in breast["findings"]:
            if key not in f["visible_in"]:
                continue
            name = {"mass": "Mass", "calcification": "Suspicious Calcification",
                    "architectural_distortion": "Architectural Distortion"}.get(f["kind"])
            if f["kind"] == "asymmetry":
                name = "Asymmetry" if f["subtype"] == "asymmetry" else "Focal Asymmetry"
            expected.add(F[name])
            kinds_seen.add(name)
        assert r.findings == tuple(sorted(expected))
    assert {"Mass", "Suspicious Calcification"} <= kinds_seen
    assert any(r.birads == 0 for r in records) and any(r.birads == 5 for r in records)
    # a one-view asymmetry counts for its view only
    for study in sorted(phantom_root.glob("study-*")):
        labels = json.loads((study / "labels.json").read_text())
        for side, breast in labels["breasts"].items():
            for f in breast["findings"]:
                if f["kind"] == "asymmetry" and f["subtype"] == "asymmetry":
                    (seen,) = f["visible_in"]
                    other = f"{side}-MLO" if seen.endswith("CC") else f"{side}-CC"
                    rec = {f"{r.laterality}-{r.view}": r for r in records if r.path.parent == study}
                    assert F["Asymmetry"] in rec[seen].findings and F["Asymmetry"] not in (rec[other].findings or ())


def test_phantom_records_leave_out_extra_views(tmp_path: Path) -> None:
    write_phantom_studies(tmp_path, 1, SEED, PhantomOptions(extra_views=True))
    assert len(list(tmp_path.glob("study-0000/*.dcm"))) == 6
    records = phantom_records(tmp_path)
    assert sorted(f"{r.laterality}-{r.view}" for r in records) == ["L-CC", "L-MLO", "R-CC", "R-MLO"]
    assert phantom_records(tmp_path / "study-0000") == records            # a single study folder works too


# ------------------------------------------------------------------------------ splits

def _synthetic(n_patients: int, images: int = 4) -> list[ImageRecord]:
    return [ImageRecord(path=Path(f"/x/{p}/{i}.dcm"), study_id=f"S{p}", patient_id=f"P{p:03d}", laterality="LR"[i % 2],
                        view="CC", birads=1, density=1, findings=())
            for p in range(n_patients) for i in range(images)]


def test_splits_deterministic_grouped_and_proportional() -> None:
    records = _synthetic(200)
    a = assign_splits(records, seed=1, val_fraction=0.15, test_fraction=0.2)
    b = assign_splits(list(reversed(records)), seed=1, val_fraction=0.15, test_fraction=0.2)
    assert [r.split for r in a] == [r.split for r in reversed(b)]          # order-independent
    c = assign_splits(records, seed=2, val_fraction=0.15, test_fraction=0.2)
    assert [r.split for r in a] != [r.split for r in c]                   # the seed matters
    by_patient: dict[str, set] = {}
    for r in a:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())                  # no patient in two splits
    counts = {s: sum(1 for v in by_patient.values() if s in v) for s in ("train", "val", "test")}
    assert counts == {"train": 130, "val": 30, "test": 40}
    small = assign_splits(_synthetic(7), seed=0, val_fraction=0.15, test_fraction=0.15)
    assert {r.split for r in small} == {"train", "val", "test"}


def test_splits_keep_preset_ones() -> None:
    records = _synthetic(40)
    preset = [replace(r, split="test") if r.patient_id in ("P000", "P001") else r for r in records]
    # one unassigned image of a preset patient joins that patient's split
    preset[1] = replace(preset[1], split=None)
    out = assign_splits(preset, seed=0, val_fraction=0.25, test_fraction=0.25)
    assert all(r.split == "test" for r in out if r.patient_id in ("P000", "P001"))
    patients = {s: {r.patient_id for r in out if r.split == s} for s in ("train", "val", "test")}
    assert len(patients["test"]) == 10 and len(patients["val"]) == 10 and len(patients["train"]) == 20
    with pytest.raises(ValueError):
        assign_splits(records, seed=0, val_fraction=0.6, test_fraction=0.5)


# ------------------------------------------------------------------------------ VinDr layout

VINDR_FINDINGS = {
    # image -> list of finding_categories cells (one per row)
    "img-0": ["['No Finding']"],
    "img-1": ["['Mass']", "['Mass', 'Suspicious Calcification']"],
    "img-2": ["['Focal Asymmetry']"],
    "img-3": ["['Architectural Distortion', 'Skin Thickening']"],
    "img-4": ["['No Finding']"],
    "img-5": ["['Global Asymmetry']"],
    # img-6, img-7: absent -> findings unlabelled
}


@pytest.fixture()
def vindr_root(phantom_root: Path, tmp_path: Path) -> Path:
    """Eight phantom images renamed into VinDr-Mammo's layout, with both CSVs."""
    root = tmp_path / "vindr"
    rows = []
    sources = sorted(phantom_root.glob("study-000[0-3]/[RL]-CC.dcm"))
    for i, src in enumerate(sources):
        study = f"study{i // 2}"
        dst = root / "images" / study / f"img-{i}.dicom"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        rows.append({"study_id": study, "series_id": f"ser{i // 2}", "image_id": f"img-{i}",
                     "laterality": src.stem[0], "view_position": "CC", "height": "512", "width": "416",
                     "breast_birads": f"BI-RADS {1 + i % 5}", "breast_density": f"DENSITY {'ABCD'[i % 4]}",
                     "split": "test" if i >= 6 else "training"})
    with (root / "breast-level_annotations.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with (root / "finding_annotations.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "study_id", "finding_categories", "finding_birads", "xmin"])
        for image, cells in VINDR_FINDINGS.items():
            for cell in cells:
                w.writerow([image, "s", cell, "", ""])
    return root


def test_vindr_records(vindr_root: Path) -> None:
    records = vindr_records(vindr_root, val_fraction=0.34, seed=0)
    by_image = {r.path.stem: r for r in records}
    assert len(records) == 8 and all(r.path.exists() for r in records)
    assert by_image["img-0"].findings == ()
    assert by_image["img-1"].findings == (F["Mass"], F["Suspicious Calcification"])
    assert by_image["img-3"].findings == (F["Architectural Distortion"], F["Skin Thickening"])
    assert by_image["img-5"].findings == (F["Global Asymmetry"],)
    assert by_image["img-6"].findings is None and by_image["img-7"].findings is None
    assert by_image["img-2"].birads == 3 and by_image["img-2"].density == 2
    assert by_image["img-4"].birads == 5 and by_image["img-7"].density == 3
    assert {by_image[f"img-{i}"].split for i in (6, 7)} == {"test"}
    training = {r.study_id: r.split for r in records if r.path.stem not in ("img-6", "img-7")}
    assert set(training.values()) == {"train", "val"}                     # 1 of 3 studies carved out
    assert sum(v == "val" for v in training.values()) == 1
    assert all(len({r.split for r in records if r.study_id == s}) == 1 for s in training)
    assert [r.split for r in vindr_records(vindr_root, val_fraction=0.34, seed=0)] == [r.split for r in records]
    assert parse_categories("['Mass', 'Suspicious Calcification']") == ["Mass", "Suspicious Calcification"]
    # load_records dispatches and keeps VinDr's test set
    loaded = load_records(DataSection(kind="vindr", root=vindr_root, val_fraction=0.34, test_fraction=0.2))
    assert [r.split for r in loaded] == [r.split for r in records]


# ------------------------------------------------------------------------------ manifest

def test_manifest_records(phantom_root: Path, tmp_path: Path) -> None:
    study = phantom_root / "study-0001"
    csv_path = tmp_path / "data" / "manifest.csv"
    csv_path.parent.mkdir()
    rel = study                                                          # absolute paths in two rows
    shutil.copyfile(study / "L-MLO.dcm", csv_path.parent / "l-mlo.dcm")
    csv_path.write_text(
        "path,study,laterality,view,birads,density,findings,split\n"
        f"{rel / 'R-CC.dcm'},S1,R,CC,4B,C,Mass;Suspicious Calcification,train\n"
        "l-mlo.dcm,S1,L,MLO,,,,\n"
        f"{rel / 'R-MLO.dcm'},S2,r,mlo,BI-RADS 6,2,-,Test\n")
    records = manifest_records(csv_path)
    a, b, c = records
    assert a.birads == 4 and a.density == 2 and a.findings == (F["Mass"], F["Suspicious Calcification"])
    assert a.split == "train" and a.path == study / "R-CC.dcm" and a.patient_id == "S1"
    assert b.path == csv_path.parent / "l-mlo.dcm" and b.path.exists()   # relative to the CSV
    assert b.birads is None and b.density is None and b.findings == () and b.split is None
    assert c.birads is None and c.density == 1 and c.findings is None and c.split == "test"
    assert c.laterality == "R" and c.view == "MLO"
    no_column = tmp_path / "nofindings.csv"
    no_column.write_text(f"path,study,laterality,view\n{study / 'L-CC.dcm'},S9,L,CC\n")
    (only,) = manifest_records(no_column)
    assert only.findings is None and only.birads is None and only.split is None
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,study,laterality,view,findings\n{study / 'L-CC.dcm'},S9,L,CC,Tumour\n")
    with pytest.raises(ValueError, match="bad.csv:2: unknown finding 'Tumour'"):
        manifest_records(bad)


# ------------------------------------------------------------------------------ load_records (phantom)

def test_load_records_generates_phantoms_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import phantoms.study as phantom

    calls = []
    real = phantom.write_phantom_studies

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "write_phantom_studies", counting)
    section = DataSection(kind="phantom", root=None, phantom_studies=6, phantom_seed=3, cache_dir=tmp_path,
                          val_fraction=0.2, test_fraction=0.2)
    first = load_records(section)
    second = load_records(section)
    assert len(calls) == 1 and (tmp_path / "phantoms-v2-3-6-small").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert first == second and len(first) == 24
    assert {r.split for r in first} == {"train", "val", "test"}
    assert all(r.path.is_relative_to(tmp_path / "phantoms-v2-3-6-small") for r in first)


# ------------------------------------------------------------------------------ cache

def test_cache_hit_is_identical_and_faster(phantom_root: Path, tmp_path: Path) -> None:
    path = phantom_root / "study-0002" / "R-MLO.dcm"
    cfg = PreprocessConfig(size=(256, 256), flip_to="L")
    cache = PreprocessedCache(tmp_path / "cache")
    t0 = time.perf_counter()
    miss = cache.get_or_prepare(path, cfg, "R")
    t1 = time.perf_counter()
    hit = cache.get_or_prepare(path, cfg, "R")
    t2 = time.perf_counter()
    assert (cache.misses, cache.hits) == (1, 1)
    assert hit.image.tobytes() == miss.image.tobytes()
    assert hit.image.tobytes() == prepare_uint8(pydicom.dcmread(path), cfg, "R").image.tobytes()
    assert (hit.crop_box, hit.flipped, hit.source_shape) == (miss.crop_box, miss.flipped, miss.source_shape)
    assert hit.flipped and t2 - t1 < t1 - t0
    # normalisation is not part of the key; geometry and laterality are
    assert cache.key(path, cfg, "R") == cache.key(path, replace(cfg, mean=(0.3,), std=(0.2,), channels=1), "R")
    assert cache.key(path, cfg, "R") != cache.key(path, replace(cfg, threshold=30), "R")
    assert cache.key(path, cfg, "R") != cache.key(path, cfg, None)
    assert not list((tmp_path / "cache").rglob("*.tmp")) and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    content = PreprocessedCache(tmp_path / "cache2", identity="content")
    copy = tmp_path / "copy.dcm"
    shutil.copyfile(path, copy)
    assert content.key(path, cfg) == content.key(copy, cfg) != cache.key(copy, cfg)


# ------------------------------------------------------------------------------ dataset

def test_dataset_items(phantom_root: Path, tmp_path: Path) -> None:
    records = phantom_records(phantom_root)[:8]
    records[1] = replace(records[1], birads=None, density=None, findings=None)
    cfg = PreprocessConfig(size=(128, 96))
    ds = MammoImageDataset(records, cfg, cache=PreprocessedCache(tmp_path / "c"))
    assert len(ds) == 8
    for i, rec in enumerate(records):
        item = ds[i]
        assert item["image"].shape == (3, 128, 96) and item["image"].dtype == torch.float32
        expected = normalize(prepare_uint8(pydicom.dcmread(rec.path), cfg, rec.laterality).image, cfg)
        np.testing.assert_array_equal(item["image"].numpy(), expected)
        assert item["birads"] == (-1 if rec.birads is None else rec.birads)
        assert item["density"] == (-1 if rec.density is None else rec.density)
        hot = np.zeros(len(FINDING_CLASSES), np.float32)
        hot[list(rec.findings or ())] = 1
        np.testing.assert_array_equal(item["findings"].numpy(), hot)
        assert float(item["findings_mask"]) == (0.0 if rec.findings is None else 1.0) and item["index"] == i
    seen = []

    def transform(img: np.ndarray) -> torch.Tensor:
        seen.append((img.dtype, img.shape))
        return torch.from_numpy(img[None].astype(np.float32))

    plain = MammoImageDataset(records, cfg, transform=transform)
    assert plain[0]["image"].shape == (1, 128, 96) and seen == [(np.uint8, (128, 96))]


def test_dataloader_with_two_workers(phantom_root: Path, tmp_path: Path) -> None:
    records = [r for r in phantom_records(phantom_root)[:12]]
    ds = MammoImageDataset(records, PreprocessConfig(size=(64, 48), channels=1), cache=PreprocessedCache(tmp_path / "c"))
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    first = batches[0]
    assert first["image"].shape == (4, 1, 64, 48) and first["findings"].shape == (4, len(FINDING_CLASSES))
    assert first["birads"].dtype == torch.int64 and first["index"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(first["image"][2].numpy(), ds[2]["image"].numpy())
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 12                # workers filled the shared cache

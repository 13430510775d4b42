"""Lesion-patch pretraining: the patches show the lesions, the stage trains, resumes and hands
its backbone to stage 2 (model.student_init = "lesion_patches")."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.package.labels import FINDING_CLASSES
from models.preprocess.geometry import ModelGeometry
from models.versamammo.checkpoint import load_checkpoint, read_checkpoint
from training.config import load_train_config
from training.data.cache import PreprocessedCache
from phantoms.study import PhantomOptions, write_phantom_studies
from training.data.phantom_records import phantom_records
from training.data.image_record import LesionBox
from training.data.vindr import vindr_records
from training.versamammo.distill.data import student_preprocess_config
from training.versamammo.patches.data import LesionPatchDataset, PatchSettings, crop_patch

TINY = Path(__file__).resolve().parents[2] / "training" / "configs" / "versamammo_tiny.toml"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patch-phantoms")
    write_phantom_studies(root, 20, 11, PhantomOptions(size="small"))
    return root


def _dataset(studies: Path, cache: Path, samples: int = 64) -> LesionPatchDataset:
    from models.versamammo.checkpoint import config_for

    pre = student_preprocess_config(config_for("tiny"))
    return LesionPatchDataset(phantom_records(studies), pre, PreprocessedCache(cache), PatchSettings(), samples)


def test_phantom_records_carry_the_lesion_boxes_of_each_view(studies: Path) -> None:
    records = phantom_records(studies)
    boxed = [r for r in records if r.boxes]
    assert boxed, "a 20-study block has lesions"
    for r in records:
        assert bool(r.boxes) == bool(r.findings) or r.findings == ()  # boxes only where findings are seen
        for b in r.boxes or ():
            assert b.finding in r.findings
            assert 0 <= b.x0 < b.x1 <= 416 and 0 <= b.y0 < b.y1 <= 512


def test_lesion_patches_are_centred_on_the_lesion_and_normal_patches_avoid_it(studies: Path, tmp_path: Path) -> None:
    ds = _dataset(studies, tmp_path / "cache", samples=256)
    assert ds.lesions and all(1 <= lesion.kind <= len(FINDING_CLASSES) for lesion in ds.lesions)
    # the mapped box lies on the prepared image where the source box was (geometry is exact)
    lesion = ds.lesions[0]
    rec = ds.images.records[lesion.image]
    geometry = ModelGeometry.of(ds.images.prepared(lesion.image), ds.cfg)
    src = rec.boxes[0]
    assert np.allclose(geometry.box_to_source(lesion.box), (src.x0, src.y0, src.x1, src.y1), atol=1e-3) or \
        len(rec.boxes) > 1
    kinds = []
    for i in range(len(ds)):
        item = ds[(i, 1000 + i)]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        kinds.append(item["kind"])
        if item["kind"] == 0:
            assert item["birads"] == 1
    share = np.mean(np.asarray(kinds) > 0)
    assert 0.35 < share < 0.65                                           # positive_fraction 0.5
    again = ds[(3, 1003)]
    assert torch.equal(again["image"], ds[(3, 1003)]["image"])          # a pure function of (index, seed)
    # normal patches never cover more than max_overlap of a lesion box of their image
    rng = np.random.default_rng(0)
    for _ in range(50):
        index, (cx, cy) = ds._normal_centre(rng)
        for x0, y0, x1, y1 in ds.boxes_by_image.get(index, []):
            iw = min(cx + 32, x1) - max(cx - 32, x0)
            ih = min(cy + 32, y1) - max(cy - 32, y0)
            assert iw <= 0 or ih <= 0 or iw * ih <= 0.1 * (x1 - x0) * (y1 - y0) + 1e-6


def test_crop_patch_pads_outside_the_image() -> None:
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    patch = crop_patch(img, 0.0, 0.0, 4)
    assert patch.shape == (4, 4) and patch[0, 0] == 0 and patch[2, 2] == img[0, 0]


def _config(root: Path, studies: Path, **extra):
    overrides = {"run.out_dir": str(root / "run"), "data.root": str(studies), "data.cache_dir": str(root / "cache"),
                 "patches.epochs": 2, "patches.samples_per_epoch": 64, "patches.val_samples": 32,
                 "patches.batch_size_per_rank": 16, "run.log_every": 2}
    overrides.update(extra)
    return load_train_config(TINY, overrides)


def test_patch_stage_trains_resumes_and_starts_stage_two(studies: Path, tmp_path: Path) -> None:
    from training.metrics_log import read_metrics
    from training.versamammo.distill.train import load_student
    from training.versamammo.patches.train import run_patches

    cfg = _config(tmp_path, studies)
    path = run_patches(cfg, max_iterations=5)                          # stops mid-run (epoch = 4 iterations)
    assert path.exists() and read_checkpoint(path)["extra"]["stage"] == "patches"
    final = run_patches(cfg)                                           # resumes to the end (8 iterations)
    records = read_metrics(final.parent / "metrics.jsonl")
    assert [r["iteration"] for r in records if "val_auc" in r] == [4, 5, 8]   # epochs, and where it stopped
    assert max(r["iteration"] for r in records) == 8
    student = load_checkpoint(final, kind="student")
    # stage 2 starts from exactly these weights with student_init = "lesion_patches"
    start = load_student(_config(tmp_path, studies, **{"model.student_init": "lesion_patches"}), student.cfg)
    for (name, a), b in zip(student.backbone.state_dict().items(), start.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="versamammo-patches"):
        load_student(_config(tmp_path / "other", studies, **{"model.student_init": "lesion_patches"}), student.cfg)


def test_vindr_finding_boxes_become_lesion_boxes(studies: Path, tmp_path: Path) -> None:
    root = tmp_path / "vindr"
    src = sorted(studies.glob("study-000[0-1]/[RL]-CC.dcm"))
    rows = []
    for i, path in enumerate(src):
        dst = root / "images" / f"st{i // 2}" / f"img-{i}.dicom"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        rows.append({"study_id": f"st{i // 2}", "series_id": "s", "image_id": f"img-{i}", "laterality": path.stem[0],
                     "view_position": "CC", "height": "512", "width": "416", "breast_birads": "BI-RADS 1",
                     "breast_density": "DENSITY B", "split": "training"})
    with (root / "breast-level_annotations.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with (root / "finding_annotations.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax"])
        w.writerow(["img-0", "['No Finding']", "", "", "", "", ""])
        w.writerow(["img-1", "['Mass', 'Suspicious Calcification']", "BI-RADS 4", "10.5", "20", "60", "80.25"])
        w.writerow(["img-2", "['Architectural Distortion']", "", "100", "100", "100", "150"])  # empty box: skipped
    by_image = {r.path.stem: r for r in vindr_records(root)}
    assert by_image["img-0"].boxes == ()
    mass, calc = FINDING_CLASSES.index("Mass"), FINDING_CLASSES.index("Suspicious Calcification")
    assert by_image["img-1"].boxes == (LesionBox(mass, 10.5, 20, 60, 80.25, 4), LesionBox(calc, 10.5, 20, 60, 80.25, 4))
    assert by_image["img-2"].boxes == ()
    assert by_image["img-3"].boxes == ()


def test_manifest_boxes_column(tmp_path: Path) -> None:
    from training.data.manifest import manifest_records

    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,study,laterality,view,boxes\n"
                        "a.dcm,s1,L,CC,\"Mass:120,340,180.5,410:4;Suspicious Calcification:50,60,70,90\"\n"
                        "b.dcm,s1,L,MLO,\n"
                        "c.dcm,s2,R,CC,-\n", encoding="utf-8")
    a, b, c = manifest_records(csv_path)
    mass, calc = FINDING_CLASSES.index("Mass"), FINDING_CLASSES.index("Suspicious Calcification")
    assert a.boxes == (LesionBox(mass, 120, 340, 180.5, 410, 4), LesionBox(calc, 50, 60, 70, 90, None))
    assert b.boxes == () and c.boxes is None
    csv_path.write_text("path,study,laterality,view,boxes\na.dcm,s1,L,CC,\"Lump:1,2,3,4\"\n", encoding="utf-8")
    with pytest.raises(ValueError, match="m.csv:2: unknown finding 'Lump'"):
        manifest_records(csv_path)
    csv_path.write_text("path,study,laterality,view,boxes\na.dcm,s1,L,CC,\"Mass:5,2,3,4\"\n", encoding="utf-8")
    with pytest.raises(ValueError, match="m.csv:2: bad box"):
        manifest_records(csv_path)

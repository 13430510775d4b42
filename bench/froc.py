"""Where the CAD marks land: FROC of the node's marks on held-out phantom studies.

    python -m bench.froc --package DIR [--studies 60] [--seed 9100] [--json] [--out FILE]
    python -m bench.froc --checkpoint student.pt [...]      # exports it into a package first

The marks are made exactly as the node makes them: each image of N small phantom studies
(``phantoms.study``, a seed never used in training) is preprocessed as the package's
manifest says, run through the package's ONNX graph by the node's ``VersaMammoRunner``, and its
lesion map turned into marks on the source image by ``node.marks.image_marks`` (every peak above 0,
at most ``--limit`` marks per image, so every operating point can be read off one run).

A mark hits a lesion when its centre lies inside the lesion's box (labels.json, per image); a
lesion counts once per image it is boxed on. Beside it, ``within half a cell``: the centre inside
the box grown by half a lesion-map cell on each side (in source pixels), which separates finding
the lesion from placing the centre at a resolution finer than the grid's. Sweeping the mark threshold down the pooled scores
gives the FROC curve: sensitivity (lesions hit / lesions) against false-positive marks per image
(marks that hit nothing, over all images, lesion-free ones included). Reported: sensitivity at 0.5
and 1 false-positive marks per image, the threshold of each operating point, and beside them:

- ``random``: the same mark extraction on uniform random maps (mean of 5 seeds): what the
  criterion gives by chance;
- ``oracle``: the box-supervision target of training (``training.data.lesion_map``) as the map:
  the best a map on this grid can do under the centre-in-box criterion;
- with ``--checkpoint``, ``untrained head``: the same student with its lesion head re-initialised.

Bootstrap 95% intervals over studies (``--bootstrap``, 0 to skip).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pydicom

DEFAULT_SEED = 9100  # held out: training uses 0, 1 and other small integers
FP_POINTS = (0.5, 1.0)
MIN_SCORE = 1e-6  # candidate marks: every peak above 0 (a map's exact zeros are no mark at any threshold)


@dataclass(frozen=True)
class ImageCase:
    """One image: its candidate marks (score, centre x, centre y) and its lesion boxes (x0, y0, x1, y1)."""

    study: int
    marks: tuple[tuple[float, float, float], ...]
    boxes: tuple[tuple[float, float, float, float], ...]


def _inside(x: float, y: float, box: Sequence[float]) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def froc_curve(cases: Sequence[ImageCase]) -> list[dict[str, float]]:
    """Operating points (threshold, false positives per image, sensitivity), threshold descending."""
    lesions = sum(len(c.boxes) for c in cases)
    events = []  # (score, image, hits: tuple of box indices) per mark
    for i, case in enumerate(cases):
        for score, x, y in case.marks:
            events.append((score, i, tuple(j for j, b in enumerate(case.boxes) if _inside(x, y, b))))
    events.sort(key=lambda e: -e[0])
    hit: set[tuple[int, int]] = set()
    fp = 0
    curve = [{"threshold": float("inf"), "fp_per_image": 0.0, "sensitivity": 0.0}]
    for k, (score, image, hits) in enumerate(events):
        if hits:
            hit.update((image, j) for j in hits)
        else:
            fp += 1
        if k + 1 < len(events) and events[k + 1][0] == score:
            continue  # tied scores form one operating point
        curve.append({"threshold": score, "fp_per_image": fp / max(len(cases), 1),
                      "sensitivity": len(hit) / lesions if lesions else 0.0})
    return curve


def sensitivity_at(curve: Sequence[dict[str, float]], fp_per_image: float) -> dict[str, float]:
    """The best operating point with at most ``fp_per_image`` false-positive marks per image."""
    best = max((p for p in curve if p["fp_per_image"] <= fp_per_image), key=lambda p: (p["sensitivity"], -p["fp_per_image"]))
    return {"sensitivity": round(best["sensitivity"], 4), "threshold": round(best["threshold"], 4),
            "fp_per_image": round(best["fp_per_image"], 4)}


def summarize(cases: Sequence[ImageCase], bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """Sensitivity at each of FP_POINTS (with a study bootstrap interval when ``bootstrap`` > 0)."""
    curve = froc_curve(cases)
    out: dict[str, Any] = {f"at_{fp:g}_fp": sensitivity_at(curve, fp) for fp in FP_POINTS}
    if bootstrap:
        rng = np.random.default_rng(seed)
        studies = sorted({c.study for c in cases})
        by_study = {s: [c for c in cases if c.study == s] for s in studies}
        samples: dict[float, list[float]] = {fp: [] for fp in FP_POINTS}
        for _ in range(bootstrap):
            drawn = [c for s in rng.choice(studies, len(studies)) for c in by_study[int(s)]]
            resampled = froc_curve(drawn)
            for fp in FP_POINTS:
                samples[fp].append(sensitivity_at(resampled, fp)["sensitivity"])
        for fp in FP_POINTS:
            lo, hi = np.percentile(samples[fp], [2.5, 97.5])
            out[f"at_{fp:g}_fp"]["ci95"] = [round(float(lo), 4), round(float(hi), 4)]
    out["lesions"] = sum(len(c.boxes) for c in cases)
    out["images"] = len(cases)
    return out


# ---------------------------------------------------------------------------- running the package
@dataclass
class PreparedView:
    study: int
    position: str
    image: np.ndarray            # normalised model input (C, H, W)
    geometry: Any                # models.preprocess.geometry.ModelGeometry
    source_shape: tuple[int, int]
    boxes: tuple[tuple[float, float, float, float], ...]
    target: np.ndarray           # training's box-supervision target on the grid (the oracle map)


def prepare_views(studies_dir: Path, preprocessing: dict[str, Any], grid: int) -> list[PreparedView]:
    """Every standard view of the phantom studies under ``studies_dir``, as the node prepares it."""
    from models.preprocess import PreprocessConfig, normalize, prepare_uint8
    from models.preprocess.geometry import ModelGeometry
    from training.data.lesion_map import lesion_grid_target
    from training.data.phantom_records import study_records

    cfg = PreprocessConfig.from_dict(preprocessing)
    views = []
    for s, study_dir in enumerate(sorted(p.parent for p in studies_dir.glob("*/labels.json"))):
        for record in study_records(study_dir):
            prepared = prepare_uint8(pydicom.dcmread(record.path), cfg)
            target, _ = lesion_grid_target(record, prepared, cfg, grid)
            boxes = tuple((b.x0, b.y0, b.x1, b.y1) for b in record.boxes or ())
            views.append(PreparedView(s, f"{record.laterality}-{record.view}", normalize(prepared.image, cfg),
                                      ModelGeometry.of(prepared, cfg), prepared.source_shape, boxes, target))
    return views


def cases_from_maps(views: Sequence[PreparedView], maps: Sequence[np.ndarray], model_size: tuple[int, int],
                    limit: int, grow_cells: float = 0.0) -> list[ImageCase]:
    """Candidate marks of each view from its map, through the node's own mark extraction; with
    ``grow_cells`` the lesion boxes grown by that many map cells (source pixels) on each side."""
    from node.marks import image_marks

    cases = []
    for view, prob in zip(views, maps):
        marks = image_marks(view.position, prob, view.geometry, model_size, view.source_shape, None, (), MIN_SCORE,
                             limit)
        gx = grow_cells * model_size[1] / prob.shape[1] / view.geometry.scale_x
        gy = grow_cells * model_size[0] / prob.shape[0] / view.geometry.scale_y
        boxes = tuple((b[0] - gx, b[1] - gy, b[2] + gx, b[3] + gy) for b in view.boxes)
        cases.append(ImageCase(view.study, tuple((m.score, m.center[0], m.center[1]) for m in marks), boxes))
    return cases


def package_maps(package: Path, views: Sequence[PreparedView], batch: int = 16) -> list[np.ndarray]:
    """The lesion maps the node's runner computes for ``views`` with the package at ``package``."""
    from node.inference.session import SessionSettings
    from node.inference.versamammo import VersaMammoRunner
    from models.package.manifest import read_manifest

    runner = VersaMammoRunner(package, read_manifest(package), SessionSettings(providers=("cpu",)), precision="fp32")
    if not runner.has_lesion_map:
        raise SystemExit(f"{package}: the package has no lesion map, so the node makes no marks")
    maps: list[np.ndarray] = []
    for start in range(0, len(views), batch):
        out = runner.run(np.stack([v.image for v in views[start:start + batch]]))
        maps.extend(out.lesion_map)
    return maps


def export_checkpoint(checkpoint: Path, out: Path, reset_head: bool = False) -> Path:
    """A fp32 package of a student checkpoint (the export code the demo packages go through)."""
    import torch

    from export.golden import phantom_images
    from export.package import finish_package
    from export.versamammo import export_versamammo
    from models.versamammo.checkpoint import load_checkpoint
    from models.versamammo.config import student_preprocess_config

    student = load_checkpoint(checkpoint, kind="student").eval()
    if student.lesion_head is None:
        raise SystemExit(f"{checkpoint}: the student has no lesion map")
    if reset_head:
        torch.manual_seed(0)
        student.lesion_head.reset_parameters()
    fields = export_versamammo(student, out, phantom_images(student_preprocess_config(student.cfg), 2),
                               precisions=("fp32",))
    path, _ = finish_package(out, "versamammo-froc", "0.0.0", fields, training={"checkpoint": str(checkpoint)})
    return path


def measure(package: Path | None, studies: int, seed: int, limit: int, bootstrap: int,
            checkpoint: Path | None = None, work: Path | None = None) -> dict[str, Any]:
    """The whole bench: phantoms, packages, maps, FROC of the model and of the baselines."""
    from models.package.manifest import read_manifest
    from phantoms.study import write_phantom_studies

    with tempfile.TemporaryDirectory(prefix="mammo-froc-") as tmp:
        root = Path(work or tmp)
        started = time.perf_counter()
        packages: dict[str, Path] = {}
        if checkpoint is not None:
            packages["model"] = export_checkpoint(checkpoint, root / "pkg-model")
            packages["untrained head"] = export_checkpoint(checkpoint, root / "pkg-untrained", reset_head=True)
        if package is not None:
            packages["model"] = package
        manifest = read_manifest(packages["model"])
        grid = int((manifest.data.get("localization") or {}).get("grid") or manifest.data["model"]["grid"])
        write_phantom_studies(root / "phantoms", studies, seed)
        views = prepare_views(root / "phantoms", manifest.data["preprocessing"], grid)
        size = tuple(manifest.data["preprocessing"]["size"])
        maps = {name: package_maps(path, views) for name, path in packages.items()}
        for k in range(5):
            maps[f"random {k}"] = [np.random.default_rng(k * 1000 + i).random((grid, grid)) for i in range(len(views))]
        maps["oracle"] = [v.target for v in views]
        criteria: dict[str, Any] = {}
        for criterion, grow in (("centre in box", 0.0), ("within half a cell", 0.5)):
            results: dict[str, Any] = {}
            for name, m in maps.items():
                results[name] = summarize(cases_from_maps(views, m, size, limit, grow),
                                          bootstrap if name in packages else 0)
            randoms = [results.pop(f"random {k}") for k in range(5)]
            results["random"] = {key: ({"sensitivity": round(float(np.mean([r[key]["sensitivity"] for r in randoms])), 4)}
                                       if key.startswith("at_") else randoms[0][key]) for key in randoms[0]}
            results["oracle"] = results.pop("oracle")
            criteria[criterion] = results
        return {"bench": "froc", "package": manifest.ref, "checkpoint": str(checkpoint) if checkpoint else None,
                "studies": studies, "seed": seed, "limit_per_image": limit, "grid": grid,
                "results": criteria,
                "seconds": round(time.perf_counter() - started, 1),
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}


def table(doc: dict[str, Any]) -> str:
    """The figures as the markdown table docs/results.md shows."""
    lines = ["| hit when | marks from | sensitivity at 0.5 FP/image (threshold) | at 1 FP/image (threshold) |",
             "|---|---|---|---|"]
    for criterion, name, r in ((c, n, r) for c, rs in doc["results"].items() for n, r in rs.items()):
        cells = []
        for key in ("at_0.5_fp", "at_1_fp"):
            p = r[key]
            ci = f" [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]" if "ci95" in p else ""
            cells.append(f"{p['sensitivity']:.2f}{ci}" + (f" ({p['threshold']:.2f})" if "threshold" in p else ""))
        lines.append(f"| {criterion} | {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help="a VersaMammo package directory with a lesion map")
    parser.add_argument("--checkpoint", type=Path, help="a student checkpoint with a lesion map (exported first)")
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--limit", type=int, default=8, help="candidate marks per image")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if (args.package is None) == (args.checkpoint is None):
        parser.error("give exactly one of --package and --checkpoint")
    doc = measure(args.package, args.studies, args.seed, args.limit, args.bootstrap, args.checkpoint)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2) if args.json else table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

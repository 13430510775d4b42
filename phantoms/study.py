"""Phantom generator: synthetic four-view screening mammography studies with ground truth.

The test and demo data of the project. Every study is a pure function of (seed, index,
options): labels (density, findings, BI-RADS) are sampled first, the images are rendered to
match them, the reference report is written from the labels, and the DICOM files are built
with UIDs derived from the same inputs, so one seed reproduces byte-identical files.

Module map: ``phantom_labels`` (sampling, BI-RADS rules), ``phantom_anatomy`` (breast
images), ``phantom_lesions`` (drawing findings), ``phantom_report`` (report text),
``phantom_dicom`` (DICOM datasets and encodings). See docs/phantom.md.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom

from phantoms.anatomy import (
    GRIDS,
    MLO_THICKNESS_SCALE,
    BreastModel,
    PixelGrid,
    ViewRender,
    sample_breast,
    xccl_shape,
)
from phantoms.dicom import (
    TRANSFER_SYNTAXES,
    ImageInfo,
    StudyInfo,
    build_dataset,
    encode,
    phantom_uid,
    quantize,
)
from phantoms.labels import BreastLabels, Finding, birads_rank, sample_labels, worst_birads
from phantoms.render import render_view
from phantoms.report import make_report

# Version of the generator's output. The same (seed, index, options) give byte-identical
# files within one version; a new version changes pixels or labels. 1: the first generator;
# 2: mass density descriptors calibrated to the glandular step, fat-containing masses,
# per-view BI-RADS, margins and spicules at physical scale (docs/phantom.md).
PHANTOM_VERSION = 2

VIEW_KEYS = ("R-CC", "R-MLO", "L-CC", "L-MLO")
SIZES = tuple(GRIDS)


@dataclass(frozen=True)
class PhantomOptions:
    size: str = "small"                 # "small" (512x416, 12-bit stored in 16) | "full" (3328x2560, 14-bit)
    monochrome1: bool = False           # write MONOCHROME1 (inverted) pixels
    laterality_attr: str = "image"      # "image": ImageLaterality (0020,0062); "series": only Laterality (0020,0060)
    view_codes: bool = True             # False: no ViewCodeSequence, only ViewPosition
    transfer_syntax: str = "explicit"   # explicit | implicit | deflated | jpeg-ls | jpeg2000 | rle (all lossless)
    for_processing: bool = False        # Digital Mammography X-Ray Image Storage - For Processing
    extra_views: bool = False           # also a spot-compression CC and an XCCL

    def __post_init__(self) -> None:
        if self.size not in GRIDS:
            raise ValueError(f"size must be one of {SIZES}, not {self.size!r}")
        if self.laterality_attr not in ("image", "series"):
            raise ValueError(f"laterality_attr must be 'image' or 'series', not {self.laterality_attr!r}")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise ValueError(
                f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, not {self.transfer_syntax!r}")

    def content_key(self) -> str:
        """Options that change the stored content (hence the Series/SOP Instance UIDs), with
        the phantom version, whose pixels differ from the previous version's.

        The transfer syntax is not among them: a lossless re-encoding is the same instance.
        """
        return (f"v{PHANTOM_VERSION}|{self.size}|m1={int(self.monochrome1)}|lat={self.laterality_attr}"
                f"|vc={int(self.view_codes)}|proc={int(self.for_processing)}")


@dataclass
class PhantomStudy:
    study_uid: str
    labels: dict                                   # JSON-able, the labels.json content
    report: str                                    # reference report text
    views: dict[str, pydicom.Dataset]              # "R-CC", "R-MLO", "L-CC", "L-MLO"
    extras: dict[str, pydicom.Dataset] = field(default_factory=dict)  # e.g. "R-CC-SPOT", "L-XCCL"


def _study_info(seed: int, index: int, options: PhantomOptions, rng: np.random.Generator) -> StudyInfo:
    """Synthetic patient and study identity; dates fixed-ish (2024, one day per index)."""
    date = dt.date(2024, 1, 2) + dt.timedelta(days=index % 365)
    minutes = 8 * 60 + (index * 17) % 540
    age = int(rng.integers(40, 75))
    birth = dt.date(date.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    if (birth.month, birth.day) > (date.month, date.day):
        age -= 1
    return StudyInfo(
        study_uid=phantom_uid("study", seed, index),
        series_uid=phantom_uid("series", seed, index, options.content_key()),
        patient_id=f"PHANTOM-{seed}-{index:04d}",
        patient_name=f"PHANTOM^{seed}-{index:04d}",
        accession_number=f"PH{seed % 100000:05d}{index % 1000000:06d}",
        study_id=f"{index % 100000:d}",
        study_date=date.strftime("%Y%m%d"),
        study_time=f"{minutes // 60:02d}{minutes % 60:02d}00",
        birth_date=birth.strftime("%Y%m%d"),
        age_years=age,
        software_version=f"phantom-{PHANTOM_VERSION}",
    )


def _image_info(seed: int, index: int, options: PhantomOptions, key: str, view: str, number: int,
                model: BreastModel, angle: float, thickness_scale: float = 1.0, force_scale: float = 1.0,
                modifiers: tuple[str, ...] = ()) -> ImageInfo:
    """Per-image attributes; exposure and dose follow the compressed thickness."""
    thickness = model.thickness_mm * thickness_scale
    twin = replace(options, for_processing=True).content_key()
    return ImageInfo(
        laterality=key[0], view=view, sop_uid=phantom_uid("image", seed, index, options.content_key(), key),
        instance_number=number, thickness_mm=thickness, compression_n=model.compression_n * force_scale,
        angle_deg=angle, modifiers=modifiers, kvp=round(25.0 + thickness / 10.0),
        mas=40.0 + 2.0 * thickness, entrance_dose_mgy=0.1 * thickness, glandular_dose_mgy=0.6 + 0.025 * thickness,
        processing_twin_uid=phantom_uid("image", seed, index, twin, key),
    )


def _crop_box(box: list[int], window: tuple[int, int, int, int]) -> list[int] | None:
    """A box moved into a cropped window's coordinates (None when it falls outside)."""
    x0, y0, x1, y1 = window
    bx0, by0, bx1, by1 = max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1)
    if bx0 >= bx1 or by0 >= by1:
        return None
    return [bx0 - x0, by0 - y0, bx1 - x0, by1 - y0]


def _spot_view(render: ViewRender, target: Finding | None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Spot-compression CC: a half-size field centred on the finding to work up."""
    rows, cols = render.image.shape
    h, w = rows // 2, cols // 2
    if target is not None and target.id in render.boxes:
        b = render.boxes[target.id]
        cy, cx = (b[1] + b[3]) // 2, (b[0] + b[2]) // 2
    else:
        ys, xs = np.nonzero(render.breast_mask)
        cy, cx = int(ys.mean()), int(xs.mean())
    y0 = int(np.clip(cy - h // 2, 0, rows - h))
    x0 = int(np.clip(cx - w // 2, 0, cols - w))
    return render.image[y0:y0 + h, x0:x0 + w], (x0, y0, x0 + w, y0 + h)


def sample_study(seed: int, index: int) -> tuple[dict[str, BreastLabels], dict[str, BreastModel], np.random.Generator]:
    """Labels and breast models of study (seed, index), and the study's generator, which the
    patient identity draws from next. Lets a caller render single views (tests, measurements)."""
    breasts = sample_labels(seed, index)
    rng = np.random.default_rng([seed, index, 0xA7A])
    mlo_angle = float(rng.uniform(40.0, 55.0))
    models = {s: sample_breast(rng, breasts[s], mlo_angle) for s in ("R", "L")}
    return breasts, models, rng


def generate_study(seed: int, index: int, options: PhantomOptions = PhantomOptions()) -> PhantomStudy:
    """One phantom study: four views (plus extras), labels and report, from (seed, index)."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative integers")
    grid: PixelGrid = GRIDS[options.size]
    breasts, models, rng = sample_study(seed, index)
    mlo_angle = models["R"].mlo_angle_deg
    info = _study_info(seed, index, options, rng)

    images: dict[str, tuple[np.ndarray, ImageInfo]] = {}
    renders: dict[str, ViewRender] = {}
    for number, key in enumerate(VIEW_KEYS, start=1):
        side, view = key.split("-")
        model = models[side]
        render = render_view(model, view, breasts[side].findings, grid)
        renders[key] = render
        for f in breasts[side].findings:
            if f.id in render.boxes:
                f.boxes[key] = render.boxes[f.id]
        angle = 0.0 if view == "CC" else (mlo_angle if side == "R" else -mlo_angle)
        images[key] = (render.image, _image_info(seed, index, options, key, view, number, model, angle,
                                                 thickness_scale=MLO_THICKNESS_SCALE if view == "MLO" else 1.0))
    for side in ("R", "L"):
        breasts[side].dense_fraction = float(np.mean([renders[f"{side}-CC"].dense_fraction,
                                                      renders[f"{side}-MLO"].dense_fraction]))

    if options.extra_views:
        findings = [f for s in ("R", "L") for f in breasts[s].findings]
        lead = max(findings, key=lambda f: birads_rank(f.birads), default=None)
        spot_side = lead.laterality if lead is not None else "R"
        other = "L" if spot_side == "R" else "R"
        spot_key, xccl_key = f"{spot_side}-CC-SPOT", f"{other}-XCCL"
        pixels, window = _spot_view(renders[f"{spot_side}-CC"], lead)
        for f in breasts[spot_side].findings:
            if f"{spot_side}-CC" in f.boxes and (box := _crop_box(f.boxes[f"{spot_side}-CC"], window)):
                f.boxes[spot_key] = box
        images[spot_key] = (pixels, _image_info(seed, index, options, spot_key, "CC", 5, models[spot_side], 0.0,
                                                thickness_scale=0.8, force_scale=1.2, modifiers=("spot_compression",)))
        xrng = np.random.default_rng([seed, index, 0xCC1])
        xccl = render_view(models[other], "XCCL", breasts[other].findings, grid,
                           shape=xccl_shape(models[other].cc, xrng))
        for f in breasts[other].findings:
            if f.id in xccl.boxes:
                f.boxes[xccl_key] = xccl.boxes[f.id]
        images[xccl_key] = (xccl.image, _image_info(seed, index, options, xccl_key, "XCCL", 6, models[other], 0.0))

    datasets: dict[str, pydicom.Dataset] = {}
    for key, (pixels, image) in images.items():
        ds = build_dataset(quantize(pixels, grid, options.monochrome1), grid, info, image,
                           monochrome1=options.monochrome1, laterality_attr=options.laterality_attr,
                           view_codes=options.view_codes, for_processing=options.for_processing)
        datasets[key] = encode(ds, options.transfer_syntax)

    def entry(key: str) -> dict[str, Any]:
        ds = datasets[key]
        return {"sop_instance_uid": str(ds.SOPInstanceUID), "file": f"{key}.dcm",
                "laterality": key[0], "view": images[key][1].view,
                "modifiers": list(images[key][1].modifiers), "rows": int(ds.Rows), "columns": int(ds.Columns),
                "birads": view_birads(breasts[key[0]], key)}

    labels: dict[str, Any] = {
        "phantom_version": PHANTOM_VERSION,
        "study_uid": info.study_uid,
        "patient_id": info.patient_id,
        "accession_number": info.accession_number,
        "seed": seed,
        "index": index,
        "size": options.size,
        "pixel_spacing_mm": grid.spacing_mm,
        "bits_stored": grid.bits_stored,
        "photometric_interpretation": "MONOCHROME1" if options.monochrome1 else "MONOCHROME2",
        "transfer_syntax": options.transfer_syntax,
        "for_processing": options.for_processing,
        "views": {k: entry(k) for k in VIEW_KEYS},
        "extras": {k: entry(k) for k in images if k not in VIEW_KEYS},
        "breasts": {s: breasts[s].to_json() for s in ("R", "L")},
    }
    return PhantomStudy(
        study_uid=info.study_uid, labels=labels, report=make_report(labels),
        views={k: datasets[k] for k in VIEW_KEYS},
        extras={k: v for k, v in datasets.items() if k not in VIEW_KEYS},
    )


def view_birads(breast: BreastLabels, key: str) -> str:
    """Worst category of the breast's findings that image ``key`` shows ("1" when none).

    A one-view asymmetry (BI-RADS 0) is in only one of the breast's standard views, so the
    other view's category does not claim it. Standard views follow ``visible_in``; extra views
    (spot, XCCL) show the findings they have a box for.
    """
    if key in VIEW_KEYS:
        view = key.split("-")[1]
        return worst_birads([f.birads for f in breast.findings if view in f.seen_in])
    return worst_birads([f.birads for f in breast.findings if key in f.boxes])


def write_study(study: PhantomStudy, directory: Path) -> Path:
    """Write one study's DICOM files, labels.json and report.txt into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, ds in {**study.views, **study.extras}.items():
        ds.save_as(directory / f"{key}.dcm", enforce_file_format=True)
    (directory / "labels.json").write_text(json.dumps(study.labels, indent=2) + "\n", encoding="utf-8")
    (directory / "report.txt").write_text(study.report, encoding="utf-8")
    return directory


def write_phantom_studies(
    outdir: Path, studies: int, seed: int, options: PhantomOptions = PhantomOptions(),
    progress: Callable[[int], None] | None = None, start: int = 0,
) -> list[Path]:
    """Write ``studies`` studies as outdir/study-0000/..., calling progress(1) after each.

    ``start`` continues a seed's sequence: studies ``start .. start + studies - 1`` (folders named by
    index), the same studies a larger set of that seed holds, so a set can be extended without
    regenerating or changing the studies it already has.
    """
    if studies < 0 or start < 0:
        raise ValueError("studies and start must be >= 0")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(start, start + studies):
        written.append(write_study(generate_study(seed, index, options), outdir / f"study-{index:04d}"))
        if progress is not None:
            progress(1)
    return written

"""models.preprocess: DICOM -> model input, identical for training and the node."""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from models.preprocess import (
    NORM_DOWNSTREAM,
    NORM_IMAGENET,
    NORM_STAGE2,
    PreprocessConfig,
    breast_crop,
    chest_wall_side,
    decode,
    official_mammorg_config,
    prepare_uint8,
    preprocess,
    resize,
    to_uint8,
)
from models.preprocess.segment import largest_component, trimmed_bounds
from phantoms.study import PhantomOptions, write_phantom_studies

ROOT = Path(__file__).resolve().parents[2]
SEED = 11
VIEWS = ("R-CC", "R-MLO", "L-CC", "L-MLO")
SYNTAXES = ("implicit", "deflated", "jpeg-ls", "jpeg2000", "rle")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small phantom studies: 3 plain, their MONOCHROME1 twins, study 0 in every transfer syntax."""
    base = tmp_path_factory.mktemp("phantoms")
    out = {"m2": base / "m2", "m1": base / "m1", "proc": base / "proc"}
    write_phantom_studies(out["m2"], 3, SEED, PhantomOptions())
    write_phantom_studies(out["m1"], 3, SEED, PhantomOptions(monochrome1=True))
    write_phantom_studies(out["proc"], 1, SEED, PhantomOptions(for_processing=True))
    for syntax in SYNTAXES:
        out[syntax] = base / syntax
        write_phantom_studies(out[syntax], 1, SEED, PhantomOptions(transfer_syntax=syntax))
    return out


@pytest.fixture(scope="module")
def full_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full-size study (3328x2560, 14-bit): exercises the strided segmentation grid."""
    base = tmp_path_factory.mktemp("full")
    write_phantom_studies(base, 1, SEED, PhantomOptions(size="full"))
    return base / "study-0000"


def _read(folder: Path, study: int, view: str) -> pydicom.Dataset:
    return pydicom.dcmread(folder / f"study-{study:04d}" / f"{view}.dcm")


def _labels(folder: Path, study: int) -> dict:
    return json.loads((folder / f"study-{study:04d}" / "labels.json").read_text())


def _composed(ds: pydicom.Dataset, cfg: PreprocessConfig) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The public steps chained by hand (the reference prepare_uint8 must equal)."""
    crop, box = breast_crop(to_uint8(ds, decode(ds), cfg), cfg)
    chest = chest_wall_side(ds)
    flipped = cfg.flip_to is not None and chest != cfg.flip_to
    if flipped:
        crop = crop[:, ::-1]
    return resize(crop, cfg.size, cfg.resize, align=(cfg.flip_to if flipped else chest) or "center"), box


def test_config_roundtrip_and_validation() -> None:
    cfg = PreprocessConfig(size=(448, 384), intensity="minmax", resize="pad", flip_to="L", trim=10,
                           threshold=40, channels=3, mean=NORM_IMAGENET[0], std=NORM_IMAGENET[1])
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["size"] == [448, 384] and d["mean"] == list(NORM_IMAGENET[0])
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    for bad in ({"intensity": "gamma"}, {"resize": "stretch"}, {"flip_to": "X"}, {"channels": 2},
                {"mean": (0.1, 0.2)}, {"std": (0.0,)}, {"threshold": 300}, {"size": (0, 5)}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"sise": [1, 2]})


# ------------------------------------------------------------------------------ output contract

@pytest.mark.parametrize("channels,norm", [(3, NORM_DOWNSTREAM), (1, NORM_STAGE2), (3, NORM_IMAGENET)])
def test_output_shape_dtype_and_normalisation(phantoms: dict[str, Path], channels: int, norm: tuple) -> None:
    cfg = PreprocessConfig(size=(320, 256), channels=channels, mean=norm[0], std=norm[1])
    ds = _read(phantoms["m2"], 0, "L-CC")
    x = preprocess(ds, cfg)
    assert x.shape == (channels, 320, 256) and x.dtype == np.float32
    img8 = prepare_uint8(ds, cfg).image
    assert img8.shape == (320, 256) and img8.dtype == np.uint8
    mean = np.broadcast_to(np.asarray(norm[0], np.float32), (channels,))
    std = np.broadcast_to(np.asarray(norm[1], np.float32), (channels,))
    for c in range(channels):
        expected = (img8.astype(np.float32) / np.float32(255) - mean[c]) / std[c]
        np.testing.assert_array_equal(x[c], expected)
    # path and dataset inputs agree
    np.testing.assert_array_equal(preprocess(phantoms["m2"] / "study-0000" / "L-CC.dcm", cfg), x)


def test_fast_path_equals_composed_public_steps(phantoms: dict[str, Path], full_study: Path) -> None:
    configs = [PreprocessConfig(), PreprocessConfig(intensity="minmax"),
               PreprocessConfig(resize="pad", flip_to="L", size=(256, 200)),
               PreprocessConfig(flip_to="R", trim=0, threshold=40)]
    datasets = [_read(phantoms["m2"], 1, v) for v in VIEWS] + [_read(phantoms["m1"], 1, "R-MLO")]
    datasets += [pydicom.dcmread(full_study / "L-MLO.dcm")]
    for ds in datasets:
        for cfg in configs:
            prepared = prepare_uint8(ds, cfg)
            image, box = _composed(ds, cfg)
            assert prepared.crop_box == box
            np.testing.assert_array_equal(prepared.image, image)


# ------------------------------------------------------------------------------ intensity

def test_monochrome1_matches_monochrome2(phantoms: dict[str, Path]) -> None:
    for study in range(3):
        for view in VIEWS:
            m2, m1 = _read(phantoms["m2"], study, view), _read(phantoms["m1"], study, view)
            assert m1.PhotometricInterpretation == "MONOCHROME1"
            # min-max: exact (inversion folded into the scaling)
            cfg = PreprocessConfig(intensity="minmax")
            a, b = prepare_uint8(m2, cfg), prepare_uint8(m1, cfg)
            assert a.crop_box == b.crop_box
            np.testing.assert_array_equal(a.image, b.image)
            # VOI: the phantom's MONOCHROME1 window is the exact mirror of the MONOCHROME2 one
            # (c' = max - c + 1 under DICOM's LINEAR function): identical output
            a, b = prepare_uint8(m2, PreprocessConfig()), prepare_uint8(m1, PreprocessConfig())
            assert a.crop_box == b.crop_box
            np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_transfer_syntaxes_give_identical_output(phantoms: dict[str, Path], syntax: str) -> None:
    for view in VIEWS:
        ds = _read(phantoms[syntax], 0, view)
        ref = _read(phantoms["m2"], 0, view)
        assert ds.file_meta.TransferSyntaxUID != ref.file_meta.TransferSyntaxUID or syntax == "explicit"
        np.testing.assert_array_equal(decode(ds), decode(ref))
        for cfg in (PreprocessConfig(), PreprocessConfig(intensity="minmax", flip_to="L")):
            assert preprocess(ds, cfg).tobytes() == preprocess(ref, cfg).tobytes()


def test_voi_and_minmax_differ_sensibly(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 2, "R-MLO")
    pixels = decode(ds)
    voi = to_uint8(ds, pixels, PreprocessConfig())
    mm = to_uint8(ds, pixels, PreprocessConfig(intensity="minmax"))
    (y0, x0, y1, x1) = breast_crop(voi, PreprocessConfig())[1]
    inside_voi, inside_mm = voi[y0:y1, x0:x1], mm[y0:y1, x0:x1]
    # both: dark background, bright breast, same anatomy
    background = np.ones(voi.shape, bool)
    background[y0:y1, x0:x1] = False
    assert voi[background].mean() < 15 and mm[background].mean() < 15
    assert inside_voi.mean() > 50 and inside_mm.mean() > 50
    assert np.corrcoef(inside_voi.ravel(), inside_mm.ravel())[0, 1] > 0.98
    # min-max stretches the breast to full scale; the phantom's window (0..0.9 of max) clips less
    assert mm.max() == 255
    assert not np.array_equal(voi, mm)
    assert abs(float(inside_voi.mean()) - float(inside_mm.mean())) > 2
    # a file without VOI (For Processing) falls back to min-max
    proc = _read(phantoms["proc"], 0, "R-MLO")
    assert "WindowCenter" not in proc
    np.testing.assert_array_equal(prepare_uint8(proc, PreprocessConfig()).image,
                                  prepare_uint8(proc, PreprocessConfig(intensity="minmax")).image)


def test_first_of_multiple_windows_is_used(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 0, "R-CC")
    multi = copy.deepcopy(ds)
    multi.WindowCenter = [ds.WindowCenter, 500]
    multi.WindowWidth = [ds.WindowWidth, 300]
    multi.WindowCenterWidthExplanation = ["STANDARD", "NARROW"]
    np.testing.assert_array_equal(preprocess(multi, PreprocessConfig()), preprocess(ds, PreprocessConfig()))


def test_unusable_window_falls_back_to_minmax(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 0, "R-CC")
    expected = prepare_uint8(ds, PreprocessConfig(intensity="minmax")).image
    for width in ("0", ""):
        bad = copy.deepcopy(ds)
        bad.WindowWidth = width                                            # LINEAR needs width >= 1
        np.testing.assert_array_equal(prepare_uint8(bad, PreprocessConfig()).image, expected)


def test_voi_lut_sequence(phantoms: dict[str, Path]) -> None:
    """A VOI LUT table (here a gamma curve over the 12-bit range, 16-bit descriptor, 12-bit data)."""
    ds = _read(phantoms["m2"], 0, "L-MLO")
    table = copy.deepcopy(ds)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(round(4095 * (v / 4095) ** 0.7)) for v in range(4096)]
    table.VOILUTSequence = DicomSequence([item])
    out = prepare_uint8(table, PreprocessConfig())
    image, box = _composed(table, PreprocessConfig())
    np.testing.assert_array_equal(out.image, image)
    identity = copy.deepcopy(table)
    identity.VOILUTSequence[0].LUTData = list(range(4096))
    linear = to_uint8(identity, decode(identity), PreprocessConfig())
    # the table's own range (12-bit values in a 16-bit descriptor) is the 0..255 range
    np.testing.assert_array_equal(linear, np.rint(decode(ds).astype(np.float64) * 255 / 4095).astype(np.uint8))
    gamma = to_uint8(table, decode(table), PreprocessConfig())
    assert gamma.mean() > linear.mean() + 5                                # gamma < 1 brightens


def test_rescale_slope_intercept_and_signed_pixels(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 1, "L-CC")
    stored = ds.pixel_array
    # 1. modality values = 0.5 * stored + 100; the window moved accordingly
    scaled = copy.deepcopy(ds)
    scaled.RescaleSlope, scaled.RescaleIntercept = "0.5", "100"
    np.testing.assert_array_equal(decode(scaled), stored.astype(np.float32) * 0.5 + 100)
    mm = PreprocessConfig(intensity="minmax")
    np.testing.assert_array_equal(prepare_uint8(scaled, mm).image, prepare_uint8(ds, mm).image)
    scaled.WindowCenter = f"{float(ds.WindowCenter) * 0.5 + 100:g}"
    scaled.WindowWidth = f"{float(ds.WindowWidth) * 0.5:g}"
    a, b = prepare_uint8(scaled, PreprocessConfig()), prepare_uint8(ds, PreprocessConfig())
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    np.testing.assert_array_equal(a.image, _composed(scaled, PreprocessConfig())[0])
    # 2. signed storage with an intercept: identical modality values, identical output
    signed = copy.deepcopy(ds)
    signed.PixelRepresentation = 1
    signed.RescaleIntercept = "2048"
    signed.PixelData = (stored.astype(np.int32) - 2048).astype(np.int16).tobytes()
    np.testing.assert_array_equal(decode(signed), decode(ds))
    for cfg in (PreprocessConfig(), mm):
        np.testing.assert_array_equal(prepare_uint8(signed, cfg).image, prepare_uint8(ds, cfg).image)


# ------------------------------------------------------------------------------ crop

def _lesion_boxes(labels: dict, view: str) -> list[list[int]]:
    return [f["boxes"][view] for b in labels["breasts"].values() for f in b["findings"] if view in f["boxes"]]


def test_crop_box_contains_lesions_and_excludes_background(phantoms: dict[str, Path]) -> None:
    cfg = PreprocessConfig()
    checked = 0
    for folder in (phantoms["m2"], phantoms["m1"]):
        for study in range(3):
            labels = _labels(folder, study)
            for view in VIEWS:
                ds = _read(folder, study, view)
                img8 = to_uint8(ds, decode(ds), cfg)
                y0, x0, y1, x1 = prepare_uint8(ds, cfg).crop_box
                for bx0, by0, bx1, by1 in _lesion_boxes(labels, view):
                    assert y0 <= by0 and x0 <= bx0 and by1 <= y1 and bx1 <= x1, (view, (bx0, by0, bx1, by1))
                    checked += 1
                ty, tx, by, bx = trimmed_bounds(img8.shape, cfg.trim)
                fg = np.zeros(img8.shape, bool)
                fg[ty:by, tx:bx] = img8[ty:by, tx:bx] > cfg.threshold
                outside = fg.copy()
                outside[y0:y1, x0:x1] = False
                assert not outside.any()                                   # nothing of the breast left out
                assert fg[y0, x0:x1].any() and fg[y1 - 1, x0:x1].any()     # and the box is tight
                assert fg[y0:y1, x0].any() and fg[y0:y1, x1 - 1].any()
                assert (y1 - y0) * (x1 - x0) < 0.9 * img8.size            # background cut off
    assert checked > 0


def test_full_size_crop_is_pixel_exact(full_study: Path) -> None:
    """The strided grid + band refinement equals the exact full-resolution component box."""
    cfg = PreprocessConfig()
    labels = json.loads((full_study / "labels.json").read_text())
    for view in VIEWS:
        ds = pydicom.dcmread(full_study / f"{view}.dcm")
        prepared = prepare_uint8(ds, cfg)
        img8 = to_uint8(ds, decode(ds), cfg)
        ty, tx, by, bx = trimmed_bounds(img8.shape, cfg.trim)
        lcc = largest_component(img8[ty:by, tx:bx] > cfg.threshold)
        rows, cols = np.flatnonzero(lcc.any(axis=1)), np.flatnonzero(lcc.any(axis=0))
        exact = (ty + rows[0], tx + cols[0], ty + rows[-1] + 1, tx + cols[-1] + 1)
        assert prepared.crop_box == exact, view
        assert prepared.source_shape == (3328, 2560)
        y0, x0, y1, x1 = prepared.crop_box
        for bx0, by0, bx1, by1 in _lesion_boxes(labels, view):
            assert y0 <= by0 and x0 <= bx0 and by1 <= y1 and bx1 <= x1


def test_blank_image_keeps_the_trimmed_frame(phantoms: dict[str, Path]) -> None:
    ds = copy.deepcopy(_read(phantoms["proc"], 0, "L-CC"))
    ds.PixelData = np.full((ds.Rows, ds.Columns), 7, np.uint16).tobytes()
    out = prepare_uint8(ds, PreprocessConfig(intensity="minmax"))
    assert out.crop_box == (5, 5, ds.Rows - 5, ds.Columns - 5)
    assert out.image.shape == (512, 512) and not out.image.any()


def test_largest_component_against_flood_fill() -> None:
    rng = np.random.default_rng(3)
    for trial in range(30):
        fg = rng.random((rng.integers(1, 25), rng.integers(1, 25))) < rng.uniform(0.2, 0.6)
        got = largest_component(fg)
        labels = _flood_labels(fg)
        if labels.max() == 0:
            assert got is None
            continue
        sizes = np.bincount(labels.ravel())[1:]
        best = int(np.argmax(sizes)) + 1                                  # raster-first among equals
        np.testing.assert_array_equal(got, labels == best, err_msg=f"trial {trial}")


def _flood_labels(fg: np.ndarray) -> np.ndarray:
    """Plain 8-connected labelling in raster order of first pixel (test oracle)."""
    labels = np.zeros(fg.shape, int)
    n = 0
    for y, x in zip(*np.nonzero(fg)):
        if labels[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        labels[y, x] = n
        while stack:
            cy, cx = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < fg.shape[0] and 0 <= nx < fg.shape[1] and fg[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = n
                        stack.append((ny, nx))
    return labels


# ------------------------------------------------------------------------------ geometry

def test_pad_keeps_aspect_and_squash_fills(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 0, "L-CC")
    squash = prepare_uint8(ds, PreprocessConfig(size=(256, 256)))
    pad = prepare_uint8(ds, PreprocessConfig(size=(256, 256), resize="pad"))
    assert squash.crop_box == pad.crop_box
    y0, x0, y1, x1 = pad.crop_box
    cols = np.flatnonzero(pad.image.max(axis=0) > 0)
    rows = np.flatnonzero(pad.image.max(axis=1) > 0)
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert h == 256 and abs(w / h - (x1 - x0) / (y1 - y0)) < 0.02        # aspect kept (crop is tall)
    assert cols[0] == 0                                                  # left breast: against the chest wall
    assert squash.image[:, -1].max() > 0 and squash.image[:, 0].max() > 0   # squash spans the width


def test_crop_mode_is_shortest_side_then_centre_crop(phantoms: dict[str, Path]) -> None:
    """Official MammoRG geometry (Resize(512) + CenterCrop(512)) through the shared pipeline: the
    tall breast crop keeps its aspect, fills the image and loses its top and bottom rows."""
    ds = _read(phantoms["m2"], 0, "L-CC")
    official = official_mammorg_config(128)
    assert (official.resize, official.mean, official.std) == ("crop", (0.5,), (0.5,))
    crop = prepare_uint8(ds, official)
    squash = prepare_uint8(ds, PreprocessConfig(size=(128, 128)))
    assert crop.crop_box == squash.crop_box and crop.image.shape == (128, 128)
    y0, x0, y1, x1 = crop.crop_box
    assert y1 - y0 > x1 - x0                                       # a tall crop: rows are cut
    nh = int((y1 - y0) * (128 / (x1 - x0)))
    covered = resize(to_uint8(ds, decode(ds), official)[y0:y1, x0:x1], (nh, 128))
    top = round((nh - 128) / 2)
    np.testing.assert_array_equal(crop.image, covered[top:top + 128])
    assert not np.array_equal(crop.image, squash.image)
    x = preprocess(ds, official)
    np.testing.assert_array_equal(x[0], (crop.image.astype(np.float32) / np.float32(255) - 0.5) / 0.5)
    # a wide image is cut at the sides instead
    wide = np.tile(np.arange(200, dtype=np.uint8), (50, 1))
    out = resize(wide, (25, 25), "crop")
    assert out.shape == (25, 25) and abs(int(out[:, 12].mean()) - 100) <= 3


def test_resize_properties() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((3000, 2400), 77, np.uint8)
    assert (resize(flat, (512, 512)) == 77).all()
    img = rng.integers(0, 256, (301, 207), dtype=np.uint8)
    np.testing.assert_array_equal(resize(img, (301, 207)), img)
    up = resize(img, (600, 400))
    assert up.shape == (600, 400) and up.dtype == np.uint8
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    down = resize(ramp, (16, 64)).astype(int)
    assert (np.diff(down, axis=1) >= 0).all() and abs(down[:, 32].mean() - 129.5) < 3   # no shift
    with pytest.raises(ValueError):
        resize(img, (10, 10), "stretch")


@pytest.mark.parametrize("flip_to", [None, "L", "R"])
def test_flip_to_puts_the_chest_wall_on_the_expected_side(phantoms: dict[str, Path], flip_to: str | None) -> None:
    cfg = PreprocessConfig(flip_to=flip_to)
    for view in VIEWS:
        ds = _read(phantoms["m2"], 0, view)
        out = prepare_uint8(ds, cfg)
        side = flip_to or view[0]                         # no flip: stored orientation (R: chest wall right)
        assert out.flipped == (flip_to is not None and flip_to != view[0])
        assert _chest_wall_column(out.image) == side, (view, flip_to)


def _chest_wall_column(img: np.ndarray) -> str:
    """Which edge column has more breast (the chest wall spans the height, the nipple does not)."""
    return "L" if (img[:, 0] > 20).sum() > (img[:, -1] > 20).sum() else "R"


def test_orientation_sources(phantoms: dict[str, Path]) -> None:
    ds = _read(phantoms["m2"], 0, "R-CC")
    cfg = PreprocessConfig(flip_to="L")
    assert chest_wall_side(ds) == "R"
    bare = copy.deepcopy(ds)
    del bare.PatientOrientation
    assert chest_wall_side(bare) == "R"                    # ImageLaterality, display convention
    assert chest_wall_side(bare, laterality="L") == "L"    # the argument wins over the attribute
    del bare.ImageLaterality
    bare.Laterality = "R"
    assert chest_wall_side(bare) == "R"                    # series-level Laterality
    del bare.Laterality
    out = prepare_uint8(bare, cfg)                         # nothing: from the pixels
    assert out.chest_wall == "R" and out.flipped
    assert _chest_wall_column(out.image) == "L"
    # PatientOrientation describes the pixels: a mirrored file ("A") is not flipped again
    mirrored = copy.deepcopy(ds)
    mirrored.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    mirrored.PatientOrientation = ["A", "L"]
    out = prepare_uint8(mirrored, cfg)
    assert not out.flipped and _chest_wall_column(out.image) == "L"


# ------------------------------------------------------------------------------ determinism

_HASH_SCRIPT = """
import hashlib, sys
from models.preprocess import PreprocessConfig, preprocess
h = hashlib.sha256()
for path in sys.argv[1:]:
    for cfg in (PreprocessConfig(), PreprocessConfig(intensity="minmax", resize="pad", flip_to="R")):
        h.update(preprocess(path, cfg).tobytes())
print(h.hexdigest())
"""


def test_bit_identical_across_processes(phantoms: dict[str, Path], full_study: Path) -> None:
    files = [str(phantoms["m2"] / "study-0002" / "R-MLO.dcm"), str(phantoms["jpeg-ls"] / "study-0000" / "L-CC.dcm"),
             str(full_study / "R-CC.dcm")]
    digests = {subprocess.run([sys.executable, "-c", _HASH_SCRIPT, *files], cwd=ROOT, check=True, timeout=120,
                              capture_output=True, text=True, env={"PYTHONHASHSEED": str(i), "PATH": ""}
                              ).stdout.strip() for i in (1, 2)}
    h = hashlib.sha256()
    for path in files:
        for cfg in (PreprocessConfig(), PreprocessConfig(intensity="minmax", resize="pad", flip_to="R")):
            h.update(preprocess(path, cfg).tobytes())
    assert digests == {h.hexdigest()}

"""Source <-> model-image geometry: a marked source pixel lands where the model image shows it."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.preprocess import PreprocessConfig, prepare_uint8
from models.preprocess.geometry import ModelGeometry, clip_box


def _image(laterality: str, orientation: str) -> pydicom.Dataset:
    """A 300x200 breast-like image (chest wall on the side ``orientation`` says) with one bright square."""
    rows, cols = 300, 200
    px = np.full((rows, cols), 30, np.uint16)
    breast = np.zeros((rows, cols), bool)
    if orientation.startswith("P"):            # chest wall on the right
        breast[20:280, 60:] = True
    else:
        breast[20:280, :140] = True
    px[breast] = 1500
    px[100:110, 90:100] = 4000                 # the "lesion": source box (90, 100, 100, 110)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImageLaterality = laterality
    ds.PatientOrientation = orientation.split("\\")
    ds.PixelData = px.tobytes()
    return ds


def _bright_box(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img >= 250)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("resize", ["squash", "pad", "crop"])
@pytest.mark.parametrize("flip_to", [None, "L"])
@pytest.mark.parametrize("orientation", ["P\\L", "A\\R"])
def test_a_source_box_lands_on_the_same_structure_in_the_model_image(resize: str, flip_to: str | None,
                                                                     orientation: str) -> None:
    ds = _image("R" if orientation.startswith("P") else "L", orientation)
    cfg = PreprocessConfig(size=(128, 96), resize=resize, flip_to=flip_to, intensity="minmax")
    prepared = prepare_uint8(ds, cfg)
    geometry = ModelGeometry.of(prepared, cfg)
    mapped = geometry.box_to_model((90, 100, 100, 110))
    seen = _bright_box(prepared.image)
    assert all(abs(a - b) <= 1.5 for a, b in zip(mapped, seen)), (mapped, seen, prepared.flipped)
    back = geometry.box_to_source(mapped)
    assert np.allclose(back, (90, 100, 100, 110), atol=1e-6)


def test_clip_box() -> None:
    assert clip_box((-5, 2, 10, 8), 8, 8) == (0.0, 2.0, 8.0, 8.0)
    assert clip_box((9, 2, 12, 8), 8, 8) is None

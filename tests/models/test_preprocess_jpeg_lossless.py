"""JPEG Lossless (process 14, selection value 1) decodes to the same model input.

pydicom cannot encode this transfer syntax and the phantom generator does not write it, so the
test carries a minimal encoder of ITU-T T.81 lossless mode (one component, predictor 1: left
neighbour, first column from above, one fixed Huffman table) for a small image.
"""
from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from models.preprocess import PreprocessConfig, decode, prepare_uint8
from phantoms.study import PhantomOptions, generate_study


def _bits_of(value: int, n: int) -> str:
    return format(value & ((1 << n) - 1), f"0{n}b") if n else ""


def encode_jpeg_lossless(img: np.ndarray, precision: int) -> bytes:
    """T.81 lossless, SV1, Pt 0: every difference category 0..16 gets a 5-bit Huffman code."""
    h, w = img.shape
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)                    # modulo 2^16, signed
    out = []
    for d in diff.ravel().tolist():
        ssss = int(abs(d)).bit_length()
        out.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            out.append(_bits_of(d if d > 0 else d - 1, ssss))
    bits = "".join(out)
    bits += "1" * (-len(bits) % 8)
    data = bytearray()
    for i in range(0, len(bits), 8):
        byte = int(bits[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)                                             # byte stuffing
    counts = [0] * 16
    counts[4] = 17                                                        # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])                                    # Ns, Cs, Td/Ta, Ss=SV1, Se, Ah/Al

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    return (b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos)
            + bytes(data) + b"\xff\xd9")


@pytest.fixture(scope="module")
def small_pair() -> tuple[pydicom.Dataset, pydicom.Dataset]:
    """A 128x104 phantom view, uncompressed and JPEG Lossless SV1."""
    ds = generate_study(5, 0, PhantomOptions()).views["R-MLO"]
    pixels = np.ascontiguousarray(ds.pixel_array[::4, ::4])
    plain = copy.deepcopy(ds)
    plain.Rows, plain.Columns = pixels.shape
    plain.PixelData = pixels.tobytes()
    jpeg = copy.deepcopy(plain)
    jpeg.PixelData = encapsulate([encode_jpeg_lossless(pixels, int(ds.BitsStored))])
    jpeg["PixelData"].VR = "OB"
    jpeg.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return plain, jpeg


def test_jpeg_lossless_sv1_decodes_identically(small_pair: tuple[pydicom.Dataset, pydicom.Dataset]) -> None:
    plain, jpeg = small_pair
    np.testing.assert_array_equal(decode(jpeg), decode(plain))
    for cfg in (PreprocessConfig(size=(128, 96)), PreprocessConfig(size=(64, 64), intensity="minmax", flip_to="L")):
        a, b = prepare_uint8(jpeg, cfg), prepare_uint8(plain, cfg)
        assert a.crop_box == b.crop_box
        np.testing.assert_array_equal(a.image, b.image)

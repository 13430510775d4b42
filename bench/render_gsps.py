"""Draw a Grayscale Softcopy Presentation State on its image, as a viewer would, into a PNG.

    python -m bench.render_gsps IMAGE.dcm STATE.dcm OUT.png [--max-side 800]

For looking at the CAD marks the node sends (docs/dicom-sr.md keeps one such picture) without a
PACS: the image is shown through the state's window (its Softcopy VOI LUT, else the image's own),
and every graphic annotation of the state that references the image is drawn from the state's
own sequences: POLYLINE and POINT graphic objects and text objects in PIXEL units, in the colour
of their graphic layer (its recommended CIELab value). Only the DICOM files are read: what is
drawn is what the state says, not what the node meant it to say.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

DEFAULT_COLOR = (255, 140, 0)


def _lab_to_rgb(values: Sequence[int]) -> tuple[int, int, int]:
    """DICOM's scaled CIELab (PS3.3 C.10.7.1.1: L 0..65535 = 0..100, a/b 0..65535 = -128..127) to sRGB."""
    lab = np.array([values[0] * 100.0 / 65535, values[1] * 255.0 / 65535 - 128, values[2] * 255.0 / 65535 - 128])
    fy = (lab[0] + 16) / 116
    f = np.array([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.9505, 1.0, 1.089])
    linear = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]) @ xyz
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055)
    r, g, b = (int(round(v)) for v in np.clip(srgb, 0, 1) * 255)
    return r, g, b


def _layer_colors(state: Dataset) -> dict[str, tuple[int, int, int]]:
    return {str(layer.GraphicLayer): _lab_to_rgb(layer.GraphicLayerRecommendedDisplayCIELabValue)
            if "GraphicLayerRecommendedDisplayCIELabValue" in layer else DEFAULT_COLOR
            for layer in state.get("GraphicLayerSequence", [])}


def _windowed(image: Dataset, state: Dataset) -> np.ndarray:
    """uint8 display pixels: modality LUT, the state's window for this image (else the image's)."""
    from pydicom.pixels import apply_modality_lut

    pixels = apply_modality_lut(image.pixel_array, image).astype(np.float64)
    window = None
    for voi in state.get("SoftcopyVOILUTSequence", []):
        refs = [str(r.ReferencedSOPInstanceUID) for r in voi.get("ReferencedImageSequence", [])]
        if (not refs or str(image.SOPInstanceUID) in refs) and "WindowCenter" in voi:
            window = (float(voi.WindowCenter), float(voi.WindowWidth))
    if window is None and "WindowCenter" in image:
        center, width = image.WindowCenter, image.WindowWidth
        window = (float(center[0] if getattr(center, "VM", 1) > 1 else center),
                  float(width[0] if getattr(width, "VM", 1) > 1 else width))
    lo, hi = (window[0] - window[1] / 2, window[0] + window[1] / 2) if window else (pixels.min(), pixels.max())
    out = np.clip((pixels - lo) / max(hi - lo, 1e-9), 0, 1)
    if str(state.get("PresentationLUTShape", "IDENTITY")) == "INVERSE" or (
            str(image.PhotometricInterpretation) == "MONOCHROME1" and "PresentationLUTShape" not in state):
        out = 1.0 - out
    return np.round(out * 255).astype(np.uint8)


def render(image: Dataset, state: Dataset, max_side: int = 800):
    """A PIL RGB image of ``image`` with the annotations of ``state`` that reference it."""
    from PIL import Image, ImageDraw, ImageFont

    base = Image.fromarray(_windowed(image, state)).convert("RGB")
    scale = min(1.0, max_side / max(base.size))
    base = base.resize((round(base.width * scale), round(base.height * scale)), Image.Resampling.BOX)
    draw = ImageDraw.Draw(base)
    colors = _layer_colors(state)
    width = max(1, round(2 * max(base.size) / 800))
    try:
        font = ImageFont.load_default(size=max(10, base.height // 45))
    except TypeError:
        font = ImageFont.load_default()
    uid = str(image.SOPInstanceUID)
    for annotation in state.get("GraphicAnnotationSequence", []):
        if uid not in [str(r.ReferencedSOPInstanceUID) for r in annotation.ReferencedImageSequence]:
            continue
        color = colors.get(str(annotation.GraphicLayer), DEFAULT_COLOR)
        for obj in annotation.get("GraphicObjectSequence", []):
            if obj.GraphicAnnotationUnits != "PIXEL":
                continue
            points = [(float(x) * scale, float(y) * scale)
                      for x, y in np.asarray(obj.GraphicData, dtype=float).reshape(-1, 2)]
            if obj.GraphicType == "POINT":
                (x, y), r = points[0], 3 * width
                draw.line((x - r, y, x + r, y), fill=color, width=width)
                draw.line((x, y - r, x, y + r), fill=color, width=width)
            else:
                draw.line(points, fill=color, width=width)
        for text in annotation.get("TextObjectSequence", []):
            if "BoundingBoxTopLeftHandCorner" in text and text.BoundingBoxAnnotationUnits == "PIXEL":
                x, y = (float(v) * scale for v in text.BoundingBoxTopLeftHandCorner)
                draw.text((x, y), str(text.UnformattedTextValue), fill=color, font=font)
    return base


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("state", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-side", type=int, default=800)
    args = parser.parse_args(argv)
    render(pydicom.dcmread(args.image), pydicom.dcmread(args.state), args.max_side).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

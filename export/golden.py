"""Golden inputs for a package: real preprocessed views of phantom studies made on the spot.

Golden vectors built from real images (rather than noise) exercise the value ranges the node
will see, so a precision or provider problem shows up in ``models verify`` as it would in use.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pydicom

from models.mammorg.config import VIEWS
from models.preprocess import PreprocessConfig, preprocess


def phantom_views(pre: PreprocessConfig, studies: int = 2, seed: int = 9100) -> tuple[np.ndarray, np.ndarray]:
    """(views (N, 4, C, H, W) float32, present (N, 4) bool) of ``studies`` phantom studies.

    The last study of two or more has its L-MLO marked missing (zeros), so the golden vectors
    also cover the missing-view path.
    """
    from phantoms.study import write_phantom_studies

    h, w = pre.size
    views = np.zeros((studies, len(VIEWS), pre.channels, h, w), dtype=np.float32)
    present = np.zeros((studies, len(VIEWS)), dtype=bool)
    with tempfile.TemporaryDirectory(prefix="mammo-golden-") as tmp:
        for i, study_dir in enumerate(write_phantom_studies(Path(tmp), studies, seed)):
            for path in sorted(Path(study_dir).rglob("*.dcm")):
                ds = pydicom.dcmread(path)
                key = f"{ds.get('ImageLaterality', '')}-{ds.get('ViewPosition', '')}"
                if key not in VIEWS or present[i, VIEWS.index(key)]:
                    continue
                v = VIEWS.index(key)
                views[i, v] = preprocess(ds, pre)
                present[i, v] = True
    if studies >= 2:
        views[-1, VIEWS.index("L-MLO")] = 0.0
        present[-1, VIEWS.index("L-MLO")] = False
    return views, present


def phantom_images(pre: PreprocessConfig, images: int = 4, seed: int = 9100) -> np.ndarray:
    """``images`` preprocessed phantom views (N, C, H, W), taken study by study in view order."""
    views, present = phantom_views(pre, studies=(images + 3) // 4, seed=seed)
    return views[present][:images]

"""CAD marks from a lesion map (node.marks): peaks, regions, kinds, and the way back from the
model image to the source pixels through the real crop, mirror and resize of the preprocessing."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.package.labels import FINDING_CLASSES
from node.marks import image_marks, lesion_kind, mark_settings, peaks
from tests.node.marks_helpers import TINY, lesion_boxes, near, oracle_maps


def test_peaks_are_local_maxima_above_the_threshold_best_first_one_per_plateau() -> None:
    g = np.zeros((8, 8))
    g[2, 2], g[2, 3] = 0.9, 0.9       # a plateau: one peak
    g[6, 6] = 0.7
    g[0, 7] = 0.3                      # below the threshold
    g[4, 4], g[4, 5] = 0.6, 0.65       # 0.6 is not a maximum
    assert peaks(g, 0.5, 10) == [(2, 2, 0.9), (6, 6, 0.7), (4, 5, 0.65)]
    assert peaks(g, 0.5, 1) == [(2, 2, 0.9)]
    assert peaks(np.zeros((4, 4)), 0.5, 3) == []


def test_one_large_lesion_is_one_mark_centred_on_it_and_two_lesions_are_two() -> None:
    from node.marks import _region

    g = np.zeros((8, 8))
    g[2:6, 1:5] = 1.0                  # a saturated 4 x 4 plateau: one lesion
    g[1, 7] = 0.8                      # another, apart
    assert peaks(g, 0.5, 10) == [(2, 1, 1.0), (1, 7, 0.8)]
    cells, centre = _region(g, 2, 1)
    assert len(cells) == 16 and centre == (3.0, 4.0)
    diffuse = np.full((8, 8), 0.5)
    diffuse[0, 0] = 0.9
    cells, _ = _region(diffuse, 0, 0)  # a region reaches a quarter of the grid, not the whole breast
    assert max(r for r, _ in cells) == 2 and max(c for _, c in cells) == 2


def test_kind_is_the_most_probable_lesion_kind_of_the_image() -> None:
    p = np.full(len(FINDING_CLASSES), 0.05)
    p[FINDING_CLASSES.index("Focal Asymmetry")] = 0.4
    p[FINDING_CLASSES.index("Mass")] = 0.3
    p[FINDING_CLASSES.index("Skin Thickening")] = 0.9  # not a lesion kind a mark can have
    assert lesion_kind(p, FINDING_CLASSES) == ("asymmetry", pytest.approx(0.4))


def test_settings_say_whether_localisation_was_attempted() -> None:
    assert mark_settings(None, 0.3, 3) == {"attempted": False, "why": "the VersaMammo package has no lesion map"}
    assert mark_settings({"mark_threshold": 0.8}, None, 2) == {"attempted": True, "mark_threshold": 0.8,
                                                               "max_marks_per_image": 2}
    assert mark_settings({"mark_threshold": 0.8}, 0.25, 2)["mark_threshold"] == 0.25


@pytest.mark.parametrize("cfg", [TINY, replace(TINY, flip_to="L"), replace(TINY, flip_to="R"),
                                 replace(TINY, resize="pad", flip_to="L")],
                         ids=["squash", "mirrored-to-L", "mirrored-to-R", "pad"])
def test_a_peak_on_the_lesion_cell_marks_the_lesion_on_the_source_image(phantom_dir: Path, cfg) -> None:
    """The box-supervision target (where training says the lesion is on the grid; overlap fractions,
    so a lesion across four cells peaks near 0.25) as the map: every
    boxed lesion gets a mark whose region holds the lesion's centre and whose centre is within one
    grid cell of the lesion's box, on the right image, whatever mirror or resize made the model image."""
    checked = 0
    for study in sorted(p for p in phantom_dir.iterdir() if p.is_dir()):
        boxes = lesion_boxes(study)
        for position, (target, prepared, geometry) in oracle_maps(study, cfg).items():
            marks = image_marks(position, target, geometry, cfg.size, prepared.source_shape, None, (), 0.2, 3)
            if position not in boxes:
                assert marks == [], position  # a lesion-free image gets no mark from the target
                continue
            cell = max(cfg.size[1] / 8 / geometry.scale_x, cfg.size[0] / 8 / geometry.scale_y)
            for box in boxes[position]:
                centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
                assert any(near(centre, m.box, 0) and near(list(m.center), box, cell) for m in marks), (position, box)
                checked += 1
            for m in marks:
                assert 0 <= m.box[0] < m.box[2] <= prepared.source_shape[1]
                assert 0 <= m.box[1] < m.box[3] <= prepared.source_shape[0]
    assert checked >= 4


def test_a_wrong_mirror_would_miss(phantom_dir: Path) -> None:
    """The check above can fail: the same maps mapped back without the mirror miss the lesions."""
    misses = 0
    for study, cfg in ((s, replace(TINY, flip_to=side)) for s in sorted(p for p in phantom_dir.iterdir() if p.is_dir())
                       for side in ("L", "R")):
        boxes = lesion_boxes(study)
        for position, (target, prepared, geometry) in oracle_maps(study, cfg).items():
            if position not in boxes or not geometry.flipped:
                continue
            unmirrored = replace(geometry, flipped=False)
            marks = image_marks(position, target, unmirrored, cfg.size, prepared.source_shape, None, (), 0.2, 3)
            misses += sum(not any(near([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], m.box, 0) for m in marks)
                          for b in boxes[position])
    assert misses >= 2

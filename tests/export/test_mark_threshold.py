"""export.mark_threshold: the package's CAD mark threshold is the lowest at which the node's marks
make at most the target number of false marks per validation image (centre in a lesion box = true)."""
from __future__ import annotations

from pathlib import Path

import pytest

from export.mark_threshold import Candidates, choose_threshold, operating_point, student_candidates
from models.versamammo.config import student_preprocess_config
from tests.export.test_export_lesion_map import lesion_student
from phantoms.study import PhantomOptions, write_phantom_studies
from training.data.phantom_records import study_records

BOX = (10.0, 10.0, 20.0, 20.0)
IMAGES = [
    Candidates(((0.9, 15.0, 15.0), (0.6, 50.0, 50.0)), (BOX,)),   # a hit, then a false mark
    Candidates(((0.8, 60.0, 60.0), (0.3, 70.0, 70.0)), ()),        # lesion-free: both false
    Candidates(((0.7, 12.0, 18.0),), (BOX,)),                      # a hit
    Candidates((), (BOX,)),                                        # a lesion never marked
]


def test_operating_point_counts_false_marks_per_image_and_lesions_found() -> None:
    assert operating_point(IMAGES, 0.7) == {"threshold": 0.7, "fp_per_image": 0.25, "sensitivity": 2 / 3}
    assert operating_point(IMAGES, 0.0) == {"threshold": 0.0, "fp_per_image": 0.75, "sensitivity": 2 / 3}


def test_the_lowest_threshold_within_the_false_mark_budget_is_chosen() -> None:
    assert choose_threshold(IMAGES, 0.25)["threshold"] == 0.7      # 0.6 would make 2 false marks / 4 images
    assert choose_threshold(IMAGES, 0.5)["threshold"] == 0.6
    assert choose_threshold(IMAGES, 1.0)["threshold"] == 0.3
    # even the strongest candidate is a false mark on every image: nothing is marked
    assert choose_threshold([Candidates(((0.9, 60.0, 60.0),), (BOX,))], 0.5)["threshold"] == 1.0


@pytest.mark.slow
def test_candidates_come_from_the_students_map_through_the_node_marks(tmp_path: Path) -> None:
    write_phantom_studies(tmp_path, 1, seed=5, options=PhantomOptions(size="small"))
    records = study_records(next(p for p in tmp_path.iterdir() if p.is_dir()))
    student = lesion_student()
    images = student_candidates(student, records, student_preprocess_config(student.cfg))
    assert len(images) == len(records) == 4
    assert [len(i.boxes) for i in images] == [len(r.boxes or ()) for r in records]
    for image in images:
        assert 0 < len(image.marks) <= 8 and all(0.0 < score <= 1.0 for score, _, _ in image.marks)

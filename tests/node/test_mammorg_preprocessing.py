"""Issue 20: the node feeds each model what its package manifest says it was trained on. A MammoRG
package with the official geometry (shortest side, centre crop, 0.5/0.5) gets crop-mode views
while VersaMammo, in the same study, gets its own squash-mode views."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from models.preprocess import PreprocessConfig, official_mammorg_config, preprocess
from node.inference.mammorg import MammoRGRunner
from node.inference.versamammo import VersaMammoRunner
from node.packages.registry import ModelRegistry
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for

POSITIONS = ("R-CC", "R-MLO", "L-CC", "L-MLO")


@pytest.fixture(scope="module")
def official_rg(tmp_path_factory):
    from tests.packages import build_mammorg_package, tiny_student

    side = tiny_student().cfg.student_input
    return build_mammorg_package(tmp_path_factory.mktemp("rg-official") / "pkg", name="mammorg-official",
                                 preprocessing=official_mammorg_config(side).to_dict())


def test_each_model_gets_the_preprocessing_of_its_manifest(start_node, tmp_path, phantom_dir, model_packages,
                                                          official_rg, monkeypatch):
    seen: dict[str, np.ndarray] = {}
    generate, run = MammoRGRunner.generate, VersaMammoRunner.run

    def spy_generate(self, views, present, settings=None):
        seen["mammorg"], seen["present"] = np.array(views), np.array(present)
        return generate(self, views, present, settings)

    def spy_run(self, x, *args, **kwargs):
        seen["versamammo"] = np.array(x)
        return run(self, x, *args, **kwargs)

    monkeypatch.setattr(MammoRGRunner, "generate", spy_generate)
    monkeypatch.setattr(VersaMammoRunner, "run", spy_run)
    data = tmp_path / "var"
    registry = ModelRegistry(data / "models")
    registry.install(model_packages["vm1"], activate=True)
    registry.install(official_rg, activate=True)
    rg_pre = PreprocessConfig.from_dict(registry.get("mammorg-official@1.0.0").manifest.data["preprocessing"])
    vm_pre = PreprocessConfig.from_dict(registry.get("versamammo-test@1.0.0").manifest.data["preprocessing"])
    assert (rg_pre.resize, rg_pre.mean, vm_pre.resize) == ("crop", (0.5,), "squash")
    node = start_node(data_dir=data)
    study_dir = sorted(phantom_dir.glob("study-*"))[0]
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    study = wait_for(lambda: (s := node.study(study_uid_of(study_dir))) and s.state in ("DONE", "FAILED") and s,
                     timeout=120)
    assert study.state == "DONE", study.events
    assert node.journal.get_result(study.study_uid)["models"]["mammorg"] == "mammorg-official@1.0.0"
    by_position = {}
    for path in study_files(study_dir):
        ds = pydicom.dcmread(path)
        by_position[f"{ds.ImageLaterality}-{ds.ViewPosition}"] = ds
    assert seen["present"].all()
    for i, position in enumerate(POSITIONS):
        np.testing.assert_array_equal(seen["mammorg"][0, i], preprocess(by_position[position], rg_pre))
        np.testing.assert_array_equal(seen["versamammo"][i], preprocess(by_position[position], vm_pre))
    assert not np.array_equal(seen["mammorg"][0], seen["versamammo"])

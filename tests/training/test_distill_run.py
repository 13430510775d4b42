"""Stage 2 end to end on tiny phantoms: views, teacher features, resume, selection, evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.versamammo.checkpoint import build_teacher, config_for, load_checkpoint, read_checkpoint, save_checkpoint
from training.config import load_train_config
from training.metrics_log import read_metrics
from training.versamammo.distill.data import TwoViewTransform
from training.versamammo.distill.train import BEST, FEATURES, LAST, run_distill
from training.versamammo.evaluate import run_eval


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(build_teacher(config_for("tiny")), path)
    return path


def _cfg(tmp: Path, teacher: Path, **extra):
    overrides = {
        "run.out_dir": str(tmp / "run"), "run.log_every": 1, "data.cache_dir": str(tmp.parent / "cache"),
        "data.phantom_studies": 12, "data.val_fraction": 0.25, "data.test_fraction": 0.25,
        "model.teacher_checkpoint": str(teacher), "distill.batch_size_per_rank": 4, "distill.epochs": 2,
        "distill.low_res_size": 64, "eval.bootstrap": 20,
    }
    overrides.update(extra)
    return load_train_config(Path("training/configs/versamammo_tiny.toml"), overrides)


def test_two_views_differ_and_use_the_serving_normalisation() -> None:
    cfg = config_for("tiny")
    img = (np.arange(128 * 128) % 251).astype(np.uint8).reshape(128, 128)
    torch.manual_seed(0)
    views = TwoViewTransform(cfg, low_res_size=64, train=True, online_teacher=True)(img)
    assert views["high"].shape == (3, 128, 128) and views["low"].shape == (3, 64, 64)
    assert views["teacher"].shape == (3, cfg.teacher_global, cfg.teacher_global)
    # The low-res view is not the high-res tensor resized: it is augmented (the official bug fixed).
    plain = TwoViewTransform(cfg, low_res_size=64, train=False)(img)
    assert not torch.allclose(views["low"], plain["low"])
    # Evaluation: the high view is exactly the node's preprocessing normalisation.
    from models.preprocess import normalize
    from training.versamammo.distill.data import student_preprocess_config

    assert torch.allclose(plain["high"], torch.from_numpy(normalize(img, student_preprocess_config(cfg))), atol=1e-6)


def test_only_the_high_resolution_pass_updates_batchnorm_statistics() -> None:
    """The student is evaluated and served on the high-resolution view: the low-resolution view's
    statistics must not leak into the running statistics that eval mode normalises with."""
    from models.versamammo.checkpoint import build_student
    from training.versamammo.distill.train import DistillModule

    torch.manual_seed(0)
    student = build_student(config_for("tiny")).train()
    module = DistillModule(student)
    high = torch.randn(4, 3, 64, 64)
    bright_low = 5.0 + 3.0 * torch.randn(4, 3, 32, 32)

    def running(m):
        return [b.running_mean.clone() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]

    torch.manual_seed(1)
    module(high, bright_low)
    with_low = running(student)
    torch.manual_seed(0)
    alone = build_student(config_for("tiny")).train()
    torch.manual_seed(1)
    alone(high)
    expected = running(alone)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(with_low, expected))
    # ... while the low view is still normalised with its own batch statistics (train mode).
    assert all(b.momentum == config_for("tiny").student_bn_momentum
               for b in student.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_run_resume_selection_and_eval(tmp_path: Path, teacher_file: Path) -> None:
    cfg = _cfg(tmp_path / "a", teacher_file)
    best = run_distill(cfg)
    out = tmp_path / "a" / "run" / "distill"
    assert best == out / BEST and best.exists() and (out / LAST).exists()
    extra = read_checkpoint(best)["extra"]
    assert extra["selected_on"] == "val"
    features = torch.load(out / FEATURES, weights_only=True)["features"]
    assert features.shape[1] == 192  # tiny teacher CLS width
    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    assert train_records and all(np.isfinite(r["loss"]) for r in train_records)
    assert any("val_score" in r for r in records)

    # Interrupt after 3 iterations, then resume: the same final weights as one straight run.
    straight = load_checkpoint(out / LAST, kind="student").state_dict()
    cfg_b = _cfg(tmp_path / "b", teacher_file)
    run_distill(cfg_b, max_iterations=3)
    run_distill(cfg_b)
    resumed = load_checkpoint(tmp_path / "b" / "run" / "distill" / LAST, kind="student").state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    # ... and the same training log: every iteration once, the checkpointed one included.
    def losses(run: Path) -> dict[int, float]:
        logged = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
        assert len(logged) == len({r["iteration"] for r in logged})
        return {r["iteration"]: r["loss"] for r in logged}

    assert losses(tmp_path / "b" / "run" / "distill") == losses(out)

    report = run_eval(cfg)
    assert report["split"] == "test" and report["images"] > 0
    for task in ("birads", "density"):
        assert set(report[task]) == {"n", "accuracy", "macro_f1", "macro_auc"}
        low, high = report[task]["accuracy"]["ci95"]
        assert low <= report[task]["accuracy"]["value"] <= high
    json.dumps(report)  # the --json output is plain JSON


def test_online_teacher_features(tmp_path: Path, teacher_file: Path) -> None:
    cfg = _cfg(tmp_path, teacher_file, **{"distill.teacher_features": "online", "distill.epochs": 1})
    best = run_distill(cfg)
    assert best.exists()
    assert not (tmp_path / "run" / "distill" / FEATURES).exists()


def test_missing_teacher_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_train_config(Path("training/configs/versamammo_tiny.toml"),
                            {"run.out_dir": str(tmp_path / "run"), "data.cache_dir": str(tmp_path / "cache"),
                             "data.phantom_studies": 4})
    with pytest.raises(FileNotFoundError, match="versamammo-ssl"):
        run_distill(cfg)


def test_torchrun_two_cpu_processes(tmp_path: Path, teacher_file: Path) -> None:
    """``torchrun --nproc_per_node=2 -m training.cli versamammo-distill`` on the gloo backend."""
    import os
    import socket
    import subprocess
    import sys

    from training.checkpoint import latest_checkpoint, read_training_state
    from training.data.records import load_records

    cfg = _cfg(tmp_path, teacher_file, **{"distill.epochs": 1})
    load_records(cfg.data)  # generate the phantoms once, before two ranks would race to
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    overrides = {"run.out_dir": tmp_path / "run", "run.log_every": 1, "data.cache_dir": cfg.data.cache_dir,
                 "data.phantom_studies": 12, "data.val_fraction": 0.25, "data.test_fraction": 0.25,
                 "model.teacher_checkpoint": teacher_file, "distill.batch_size_per_rank": 4,
                 "distill.epochs": 1, "distill.low_res_size": 64}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "training.cli", "versamammo-distill",
           "--config", "training/configs/versamammo_tiny.toml"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "run" / "distill"
    state = read_training_state(latest_checkpoint(out))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / LAST).exists() and (out / BEST).exists()
    iterations = [r["iteration"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert iterations == sorted(set(iterations))  # one record per iteration: only rank 0 writes
    # The evaluation command under the same launcher evaluates once (rank 0) and prints one report.
    evaluate = cmd[:cmd.index("versamammo-distill")] + ["versamammo-eval", "--json"] + \
        cmd[cmd.index("versamammo-distill") + 1:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        evaluate[evaluate.index(f"--master_port={port}")] = f"--master_port={sock.getsockname()[1]}"
    proc = subprocess.run(evaluate, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # one JSON document: a second rank's report would break this
    assert report["split"] == "test" and report["images"] > 0
    assert "rank 1: versamammo-eval runs on rank 0 only" in proc.stderr


_LATE_RANK_SCRIPT = r"""
import os, sys, time
from datetime import timedelta
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from models.versamammo.checkpoint import config_for
from training.versamammo.distill.train import offline_teacher_features

dist.init_process_group("gloo", timeout=timedelta(seconds=20))
rank = dist.get_rank()

class Images:
    def __len__(self): return 3
    def prepared(self, i):
        return type("P", (), {"image": np.full((48, 40), 60 * i, np.uint8)})()

class Backbone(torch.nn.Module):
    def forward(self, x): return {"cls": x.mean(dim=(2, 3))}

if rank == 1:
    time.sleep(4)  # a rank that starts late finds the cache rank 0 has just written
features = offline_teacher_features(Images(), Backbone(), config_for("tiny"), torch.device("cpu"),
                                    Path(sys.argv[1]), key="k")
total = features.sum().reshape(1)
dist.all_reduce(total)
dist.barrier()
dist.destroy_process_group()
print("ok", features.shape[0], flush=True)
"""


def test_a_late_rank_does_not_hang_on_the_teacher_feature_cache(tmp_path: Path) -> None:
    """Both ranks pass the cache barrier even when rank 1 arrives after rank 0 wrote the cache
    (a torchrun hang on a loaded CI machine before)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = tmp_path / "features.pt"
    procs = [subprocess.Popen([sys.executable, "-c", _LATE_RANK_SCRIPT, str(cache)],
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(out.strip().endswith("ok 3") for out in outputs), outputs


def test_box_supervised_lesion_map_trains_and_the_heads_see_avg_and_max(tmp_path: Path, teacher_file: Path) -> None:
    """model.student_lesion_map + distill.lesion_map_weight (+ a warm-up epoch of the map alone): the
    lesion-map term is logged, the saved
    student carries the map and the avg_max heads, and a run asking for the map without it fails."""
    cfg = _cfg(tmp_path / "a", teacher_file, **{"distill.epochs": 2, "distill.lesion_map_weight": 1.0,
                                                "distill.lesion_map_warmup_epochs": 1,
                                                "model.student_lesion_map": True,
                                                "model.student_head_pool": "avg_max"})
    best = run_distill(cfg)
    student = load_checkpoint(best, kind="student")
    assert student.cfg.student_lesion_map and student.cfg.student_head_pool == "avg_max"
    assert student.birads_head.in_features == 2 * student.cfg.student_dim
    out = student(torch.zeros(1, 3, 256, 256))
    assert out["lesion_map"].shape == (1, 8, 8)
    logged = [r for r in read_metrics(tmp_path / "a" / "run" / "distill" / "metrics.jsonl") if "loss" in r]
    assert logged and all(np.isfinite(r["lesion_map"]) and r["lesion_map"] > 0 for r in logged)
    # the warm-up epoch trains the lesion map alone; then every term
    assert {("ce" in r) for r in logged if r["epoch"] == 0} == {False}
    assert {("ce" in r) for r in logged if r["epoch"] == 1} == {True}
    with pytest.raises(ValueError, match="student_lesion_map"):
        run_distill(_cfg(tmp_path / "b", teacher_file, **{"distill.lesion_map_weight": 1.0,
                                                          "model.student_lesion_map": False}))


def test_a_started_student_takes_the_runs_heads() -> None:
    """A student pretrained with plain heads starts a run that asks for others: the backbone is
    carried over exactly, the heads that fit are kept, the new ones start afresh and are named."""
    from dataclasses import replace

    from models.versamammo.checkpoint import build_student
    from training.versamammo.distill.train import adopt_heads

    torch.manual_seed(0)
    plain = build_student(config_for("tiny"))
    assert adopt_heads(plain, plain.cfg) is plain
    richer = adopt_heads(plain, replace(plain.cfg, student_lesion_map=True))
    for key, value in plain.backbone.state_dict().items():
        assert torch.equal(value, richer.backbone.state_dict()[key]), key
    assert torch.equal(plain.birads_head.weight, richer.birads_head.weight)
    assert richer.load_notes == ["lesion_head: new for this run's heads, randomly initialised"]
    wider = adopt_heads(plain, replace(plain.cfg, student_head_pool="avg_max"))
    assert wider.birads_head.in_features == 2 * plain.cfg.student_dim
    assert {n.split(":")[0] for n in wider.load_notes} == {"birads_head", "density_head", "findings_head"}


def test_student_input_option_trains_a_student_at_another_resolution(tmp_path: Path, teacher_file: Path) -> None:
    """model.student_input: the run's student reads its images at that side, its lesion map and feature
    grid follow (input / 32), and the saved checkpoint rebuilds at that size; a side that is not a
    multiple of 32 is refused when the configuration loads."""
    from training.config import TrainConfigError
    from training.versamammo.distill.data import student_preprocess_config
    from training.versamammo.student_config import student_model_config

    cfg = _cfg(tmp_path / "a", teacher_file, **{"distill.epochs": 1, "distill.lesion_map_weight": 1.0,
                                                "model.student_lesion_map": True, "model.student_input": 320})
    assert student_preprocess_config(student_model_config(cfg)).size == (320, 320)
    student = load_checkpoint(run_distill(cfg), kind="student")
    assert (student.cfg.student_input, student.cfg.student_grid) == (320, 10)
    out = student.eval()(torch.zeros(1, 3, 320, 320))
    assert out["lesion_map"].shape == (1, 10, 10)
    assert student.feature_grid(torch.zeros(1, 3, 320, 320)).shape == (1, student.cfg.student_dim, 10, 10)
    with pytest.raises(TrainConfigError, match="student_input: Input should be a multiple of 32"):
        _cfg(tmp_path / "b", teacher_file, **{"model.student_input": 300})

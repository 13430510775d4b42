"""Stage-1 training runs on phantom images: learning, last-layer freeze, exact resume, torchrun/gloo, probe."""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import list_checkpoints, read_training_state
from training.config import load_train_config
from training.metrics_log import read_metrics
from training.versamammo.ssl.train import TEACHER_FINAL, TEACHER_OFFICIAL, run_ssl

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "versamammo_tiny.toml"

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One phantom set (and preprocessed cache) for every run of this module."""
    return tmp_path_factory.mktemp("ssl-cache")


def _cfg(out: Path, cache: Path, **overrides):
    values = {"run.out_dir": str(out), "data.cache_dir": str(cache), "data.phantom_studies": 8,
              "run.log_every": 1, "ssl.batch_size_per_rank": 4}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_train_config(TINY, values)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "ssl" / "metrics.jsonl")]


def test_ssl_loss_falls_and_outputs_load(tmp_path, cache_dir) -> None:
    """30 iterations with Sinkhorn-Knopp targets: the loss falls; with lr 0 it does not.

    Sinkhorn-Knopp: with softmax centering the DINO term first *rises* towards log K while the
    centre catches up with a collapsed random-init teacher (DINO's usual start), which hides
    the learning in a run this short; SK targets are balanced from the first step.
    """
    common = dict(ssl__epochs=2, ssl__iterations_per_epoch=15, ssl__base_lr=1e-2, ssl__momentum_teacher=0.9,
                  ssl__centering="sinkhorn_knopp")
    final = run_ssl(_cfg(tmp_path / "learn", cache_dir, **common))
    frozen = run_ssl(_cfg(tmp_path / "lr0", cache_dir, **{**common, "ssl__base_lr": 0.0, "ssl__min_lr": 0.0}))
    learn, still = _losses(tmp_path / "learn"), _losses(tmp_path / "lr0")
    assert len(learn) == len(still) == 30
    first, last = statistics.mean(learn[:5]), statistics.mean(learn[-5:])
    print(f"SSL loss, first 5 vs last 5 iterations: {first:.3f} -> {last:.3f}; lr 0: "
          f"{statistics.mean(still[:5]):.3f} -> {statistics.mean(still[-5:]):.3f}")
    assert last < first - 0.5
    assert statistics.mean(still[-5:]) > statistics.mean(still[:5]) - 0.2  # no learning, no fall
    assert learn[0] == pytest.approx(still[0])  # same start: the difference is the training

    rec = read_metrics(tmp_path / "learn" / "ssl" / "metrics.jsonl")[-1]
    assert {"iteration", "epoch", "loss", "dino_loss", "ibot_loss", "koleo_loss", "lr", "wd", "momentum",
            "teacher_temp", "images_per_s"} <= set(rec)
    assert rec["iteration"] == 29 and rec["epoch"] == 1

    # both output formats hold the same EMA teacher
    from models.versamammo.checkpoint import config_for, load_checkpoint, load_official_teacher

    assert final.name == TEACHER_FINAL and frozen.name == TEACHER_FINAL
    ours = load_checkpoint(final, kind="teacher")
    official = load_official_teacher(final.parent / TEACHER_OFFICIAL, config_for("tiny"))
    assert not official.load_notes
    state = read_training_state(list_checkpoints(final.parent)[-1][1])["model"]
    for k, v in ours.state_dict().items():
        assert torch.equal(v, official.state_dict()[k]), k
        assert torch.equal(v, state[f"teacher.{k}"]), k


def test_last_layer_frozen_during_the_first_epoch(tmp_path, cache_dir) -> None:
    # 3 epochs of 2 iterations, ended at iteration 4 (stop_at_iteration: schedules stay 6 long)
    cfg = _cfg(tmp_path, cache_dir, ssl__epochs=3, ssl__iterations_per_epoch=2, ssl__freeze_last_layer_epochs=1,
               ssl__base_lr=1e-2, ssl__warmup_epochs=0, ssl__stop_at_iteration=4)
    from models.versamammo.checkpoint import build_teacher, config_for

    torch.manual_seed(cfg.run.seed)  # run_ssl builds the student from the run seed
    initial = build_teacher(config_for("tiny"), drop_path_rate=cfg.ssl.drop_path_rate).state_dict()
    run_ssl(cfg, max_iterations=2)  # epoch 0 only
    state = read_training_state(tmp_path / "ssl" / "checkpoint_00000002.pt")
    model, optim = state["model"], state["optimizer"]
    last = ["dino_head.last_layer.weight_v", "ibot_head.last_layer.weight_v"]
    for name in last:
        assert torch.equal(model[f"student.{name}"], initial[name]), name  # unchanged in epoch 0
    assert not torch.equal(model["student.dino_head.mlp.0.weight"], initial["dino_head.mlp.0.weight"])
    # the frozen parameters never got a gradient: AdamW holds no state for them
    groups = [g for g in optim["param_groups"] if g["is_last_layer"]]
    assert groups and all(pid not in optim["state"] for g in groups for pid in g["params"])

    final = run_ssl(cfg)  # resume into epoch 1: the prototypes train
    state = read_training_state(tmp_path / "ssl" / "checkpoint_00000004.pt")
    for name in last:
        assert not torch.equal(state["model"][f"student.{name}"], initial[name]), name
    assert final.name == TEACHER_FINAL and not (tmp_path / "ssl" / "checkpoint_00000006.pt").exists()
    from training.versamammo.ssl.train import build_schedules

    lrs = [r["lr"] for r in read_metrics(tmp_path / "ssl" / "metrics.jsonl")]
    assert lrs == pytest.approx([build_schedules(cfg.ssl, 1).lr[i] for i in range(4)])
    assert lrs[-1] > build_schedules(cfg.ssl, 1).lr[5]  # still mid-cosine when stopped


def test_resume_is_bit_exact(tmp_path, cache_dir) -> None:
    """Uninterrupted 6 iterations == 4 iterations, stop (mid-epoch), resume to 6."""
    kw = dict(ssl__epochs=2, ssl__iterations_per_epoch=3, ssl__drop_path_rate=0.2, ssl__base_lr=1e-2,
              ssl__warmup_epochs=1, run__checkpoint_every=2)  # drop-path: the torch RNG matters
    full = run_ssl(_cfg(tmp_path / "full", cache_dir, **kw))
    part = _cfg(tmp_path / "part", cache_dir, **kw)
    stopped = run_ssl(part, max_iterations=4)
    assert stopped.name == "checkpoint_00000004.pt"
    resumed = run_ssl(part)
    assert resumed.name == TEACHER_FINAL

    a = read_training_state(tmp_path / "full" / "ssl" / "checkpoint_00000006.pt")
    b = read_training_state(tmp_path / "part" / "ssl" / "checkpoint_00000006.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # student, teacher and both centres
    for pid, st in a["optimizer"]["state"].items():
        for key, value in st.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), (pid, key)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert torch.load(full, weights_only=True)["state_dict"].keys() == torch.load(resumed, weights_only=True)["state_dict"].keys()
    # the metrics of the resumed run read as one run, with the same losses
    la, lb = read_metrics(tmp_path / "full" / "ssl" / "metrics.jsonl"), read_metrics(tmp_path / "part" / "ssl" / "metrics.jsonl")
    assert [r["iteration"] for r in lb] == list(range(6))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]

    # warm start from the official-format export: with lr 0 the student stays the loaded teacher
    warm = _cfg(tmp_path / "warm", cache_dir, ssl__init_checkpoint=str(full.parent / TEACHER_OFFICIAL),
                ssl__base_lr=0.0, ssl__min_lr=0.0, ssl__epochs=1, ssl__iterations_per_epoch=1)
    run_ssl(warm)
    student = read_training_state(tmp_path / "warm" / "ssl" / "checkpoint_00000001.pt")["model"]
    loaded = torch.load(full, weights_only=True)["state_dict"]
    for k, v in loaded.items():
        assert torch.equal(student[f"student.{k}"], v), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, cache_dir: Path, *extra: str, **sets) -> None:
    values = {"run.out_dir": out, "data.cache_dir": cache_dir, "data.phantom_studies": 8, "ssl.epochs": 2,
              "ssl.iterations_per_epoch": 2, "ssl.batch_size_per_rank": 2, "ssl.drop_path_rate": 0.1,
              "run.log_every": 1, "run.device": "cpu"}
    values.update({k.replace("__", "."): v for k, v in sets.items()})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "training.versamammo.ssl", "--config", str(TINY), *extra]
    for k, v in values.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_torchrun_two_processes_gloo_ddp_and_fsdp(tmp_path, cache_dir) -> None:
    """``torchrun --nproc_per_node=2 -m training.versamammo.ssl`` on CPU: DDP keeps the ranks equal;
    FSDP (stopped and resumed) trains the same model."""
    # generate the phantoms once here so the two ranks do not both write them
    from training.data.records import load_records

    load_records(_cfg(tmp_path, cache_dir).data)
    out = tmp_path / "ddp"
    _torchrun(out, cache_dir)
    state = read_training_state(out / "ssl" / "checkpoint_00000004.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    fps = state["rank_fingerprints"]
    assert len(fps) == 2 and fps[0] == fps[1]  # both ranks hold the same student, teacher and centres
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # but their own RNG streams
    assert (out / "ssl" / TEACHER_FINAL).is_file() and (out / "ssl" / TEACHER_OFFICIAL).is_file()
    records = read_metrics(out / "ssl" / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]  # main rank only
    assert records[0]["images_per_s"] > 0

    fsdp = tmp_path / "fsdp"
    _torchrun(fsdp, cache_dir, "--max-iterations", "3", ssl__use_fsdp="true")
    assert [p.name for _, p in list_checkpoints(fsdp / "ssl")] == ["checkpoint_00000002.pt", "checkpoint_00000003.pt"]
    _torchrun(fsdp, cache_dir, ssl__use_fsdp="true")  # resumes the sharded run from iteration 3
    ddp_teacher = torch.load(out / "ssl" / TEACHER_FINAL, weights_only=True)["state_dict"]
    fsdp_teacher = torch.load(fsdp / "ssl" / TEACHER_FINAL, weights_only=True)["state_dict"]
    for k, v in ddp_teacher.items():
        assert torch.allclose(v, fsdp_teacher[k], atol=1e-6), k
    fsdp_losses = [r["loss"] for r in read_metrics(fsdp / "ssl" / "metrics.jsonl")]
    assert fsdp_losses == pytest.approx([r["loss"] for r in records], rel=1e-5)


def test_linear_probe_separates_density_with_frozen_features(cache_dir) -> None:
    from models.versamammo.checkpoint import build_teacher, config_for
    from training.versamammo.ssl.data import phantom_image_source
    from training.versamammo.ssl.probe import linear_probe, linear_probe_details

    torch.manual_seed(0)
    backbone = build_teacher(config_for("tiny")).backbone
    train = phantom_image_source(seed=5, studies=range(0, 10))
    val = phantom_image_source(seed=5, studies=range(10, 16))
    res = linear_probe_details(backbone, train, val, "density")
    assert (res.n_train, res.n_val) == (40, 24) and 2 <= res.n_classes <= 4
    assert res.accuracy > res.majority_accuracy + 0.1  # features carry the density signal
    assert backbone.training  # restored after extraction
    # shuffled training labels: the probe has nothing to learn
    labels = [train.label(i) for i in range(len(train))]
    shuffled = (train.images, labels[7:] + labels[:7])
    assert linear_probe(backbone, shuffled, val) < res.accuracy

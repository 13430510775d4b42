"""MammoRG stages end to end on a few phantoms: each stage starts from the previous one, resumes,
merges LoRA, and the evaluation command scores generated reports against the references."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from models.mammorg.model import load_mammorg
from models.mammorg.edges import atlas_edges
from models.mammorg.knowledge import adjacency, graph_terms
from training.cli import app
from training.config import load_train_config
from training.mammorg.common import model_dir, stage_dir
from training.mammorg.knowledge import run_knowledge
from training.mammorg.lm_stages import run_lm_stage
from training.metrics_log import read_metrics

CONFIG = Path("training/configs/mammorg_tiny.toml")


def _overrides(root: Path) -> dict:
    return {
        "run.out_dir": str(root / "run"), "run.log_every": 1, "data.cache_dir": str(root / "cache"),
        "data.phantom_studies": 10, "data.val_fraction": 0.2, "data.test_fraction": 0.2,
        "mammorg.lm_warmup_epochs": 1, "mammorg.tokenizer_vocab": 400,
        "knowledge.epochs": 2, "knowledge.batch_size_per_rank": 3,
        "align.epochs": 1, "align.batch_size_per_rank": 3, "sft.epochs": 2, "sft.batch_size_per_rank": 3,
        "generate.max_new_tokens": 24, "eval.bootstrap": 10,
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mammorg")
    overrides = _overrides(root)
    cfg = load_train_config(CONFIG, overrides)
    run_knowledge(cfg)
    run_lm_stage(cfg, "align")
    # SFT interrupted after one iteration, then started again: it resumes.
    run_lm_stage(cfg, "sft", max_iterations=1)
    run_lm_stage(cfg, "sft")
    return root, overrides


def test_knowledge_stage_builds_the_model_and_selects_on_val(pipeline):
    root, overrides = pipeline
    cfg = load_train_config(CONFIG, overrides)
    model, tokenizer = load_mammorg(model_dir(cfg, "knowledge"))
    meta = json.loads((model_dir(cfg, "knowledge") / "mammorg.json").read_text())
    assert meta["extra"]["selected_on"] == "val"
    assert model.cfg.bank_size == meta["extra"]["bank_size"] > 0
    assert model.bank.abs().sum() > 0 and model.node_features.abs().sum() > 0
    assert model.cfg.base_vocab_size < model.cfg.vocab_size == len(tokenizer)
    records = read_metrics(stage_dir(cfg, "knowledge") / "metrics.jsonl")
    assert any("val_graph_birads_macro_f1" in r for r in records)
    assert (stage_dir(cfg, "knowledge") / "tokenizer-base" / "tokenizer.json").exists()
    # The graph: the atlas table plus the training reports' co-occurrence, listed with sources and
    # installed as the saved model's adjacency.
    listed = json.loads((stage_dir(cfg, "knowledge") / "graph_edges.json").read_text())
    assert listed["mode"] == meta["extra"]["graph"]["mode"] == "knowledge"
    assert all(e["source"] for e in listed["list"])
    edges = [(e["head"], e["relation"], e["tail"]) for e in listed["list"]]
    assert {e[:3] for e in atlas_edges()} <= set(edges)   # 6 training reports add few or no edges here
    torch.testing.assert_close(model.adjacency, adjacency(graph_terms(), edges))


def test_each_stage_starts_from_the_previous_one(pipeline):
    root, overrides = pipeline
    cfg = load_train_config(CONFIG, overrides)
    knowledge, _ = load_mammorg(model_dir(cfg, "knowledge"))
    align, _ = load_mammorg(model_dir(cfg, "align"))
    sft, _ = load_mammorg(model_dir(cfg, "sft"))
    # Knowledge modules are frozen after stage 1 and carried through both later stages.
    for key, value in knowledge.graph.state_dict().items():
        assert torch.equal(value, align.graph.state_dict()[key])
        assert torch.equal(value, sft.graph.state_dict()[key])
    assert torch.equal(knowledge.bank, sft.bank)
    # Alignment moved the projectors and only the term rows of the embedding matrix.
    base = knowledge.cfg.base_vocab_size
    e0, e1 = knowledge.lm.get_input_embeddings().weight, align.lm.get_input_embeddings().weight
    assert torch.equal(e0[:base], e1[:base]) and not torch.equal(e0[base:], e1[base:])
    assert not torch.equal(knowledge.image_projector[0].weight, align.image_projector[0].weight)
    # The LM body is untouched by alignment, changed by SFT (merged LoRA, no adapter keys left).
    q0 = align.lm.model.layers[0].self_attn.q_proj.weight
    q1 = sft.lm.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(knowledge.lm.model.layers[0].self_attn.q_proj.weight, q0)
    assert not torch.equal(q0, q1)
    assert not any("lora" in k for k in sft.state_dict())


def test_sft_resumed_instead_of_restarting(pipeline):
    root, overrides = pipeline
    cfg = load_train_config(CONFIG, overrides)
    iterations = [r["iteration"] for r in read_metrics(stage_dir(cfg, "sft") / "metrics.jsonl") if "loss" in r]
    assert iterations == sorted(set(iterations)) and iterations[0] == 1


def test_eval_command_scores_generated_reports(pipeline):
    root, overrides = pipeline
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(app, ["mammorg-eval", "--config", str(CONFIG), *sets, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for name in ("birads_f1", "density_f1", "finding_f1_pooled", "relation_f1_per_report", "bleu_4", "rouge_l"):
        assert name in report["metrics"]
    assert "birads_f1_majority" in report["baselines"] and "density_f1_majority" in report["baselines"]
    cfg = load_train_config(CONFIG, overrides)
    preds = (stage_dir(cfg, "eval") / "predictions-test.jsonl").read_text().splitlines()
    assert len(preds) == report["n_reports"] >= 1
    assert all(isinstance(json.loads(line)["text"], str) for line in preds)


def test_torchrun_two_cpu_processes_align(pipeline, tmp_path):
    """``torchrun --nproc_per_node=2 -m training.cli mammorg-align`` on gloo, from a copied stage-1 model."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    from training.checkpoint import latest_checkpoint, read_training_state

    root, overrides = pipeline
    cfg = load_train_config(CONFIG, overrides)
    run = tmp_path / "run"
    shutil.copytree(stage_dir(cfg, "knowledge") / "model", run / "mammorg" / "knowledge" / "model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sets = {**overrides, "run.out_dir": str(run), "align.batch_size_per_rank": 2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "training.cli", "mammorg-align", "--config", str(CONFIG)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run / "mammorg" / "align"
    state = read_training_state(latest_checkpoint(out))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "model" / "mammorg.json").exists()
    iterations = [r["iteration"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert iterations == sorted(set(iterations))  # only rank 0 writes


def test_official_preprocessing_is_what_the_encoder_sees_and_what_the_model_keeps(tmp_path):
    """Issue 20: ``mammorg.preprocessing = "official"`` (shortest side, centre crop, 0.5/0.5) is used
    for the cached encoder tokens and saved in the model, so export puts it in the manifest."""
    from models.mammorg.config import preprocess_config
    from models.preprocess import official_mammorg_config
    from training.mammorg.data import load_studies
    from training.mammorg.features import _key

    overrides = {**_overrides(tmp_path), "data.phantom_studies": 8, "mammorg.lm_warmup_epochs": 0,
                 "knowledge.epochs": 1, "knowledge.batch_size_per_rank": 2, "mammorg.preprocessing": "official"}
    cfg = load_train_config(CONFIG, overrides)
    run_knowledge(cfg)
    model, _ = load_mammorg(model_dir(cfg, "knowledge"))
    official = official_mammorg_config(model.vision.cfg.student_input)
    assert preprocess_config(model.cfg, model.vision.cfg) == official
    assert load_train_config(CONFIG).mammorg.preprocessing == "student"   # ours stays the default
    studies = load_studies(cfg.data)
    tokens = Path(cfg.run.out_dir) / "mammorg" / "tokens"
    assert [p.name for p in tokens.glob("tokens-*.pt")] == [f"tokens-{_key(model.vision, studies, official)}.pt"]


def test_pooled_encoder_grid_is_what_the_cache_holds_and_the_model_keeps(tmp_path):
    """``mammorg.vision_pool = 2``: the cached tokens are the student's 8 x 8 grid pooled to 4 x 4 per
    view, and the saved model keeps the pooling (so evaluation and export cut the same tokens)."""
    from models.versamammo.config import student_preprocess_config
    from training.mammorg.data import load_studies
    from training.mammorg.features import _key

    overrides = {**_overrides(tmp_path), "data.phantom_studies": 8, "mammorg.lm_warmup_epochs": 0,
                 "knowledge.epochs": 1, "knowledge.batch_size_per_rank": 2, "mammorg.vision_pool": 2}
    cfg = load_train_config(CONFIG, overrides)
    run_knowledge(cfg)
    model, _ = load_mammorg(model_dir(cfg, "knowledge"))
    assert (model.cfg.vision_pool, model.cfg.vision_grid, model.cfg.tokens_per_view) == (2, 4, 16)
    studies = load_studies(cfg.data)
    pre = student_preprocess_config(model.vision.cfg)
    cached = Path(cfg.run.out_dir) / "mammorg" / "tokens" / f"tokens-{_key(model.vision, studies, pre, 2)}.pt"
    tokens = torch.load(cached, weights_only=True)["tokens"]
    assert tokens.shape[1:] == (4, 16, model.cfg.vision_dim)


@pytest.mark.timeout(900)
def test_sft_sharded_with_fsdp_under_torchrun_trains_what_ddp_trains(pipeline, tmp_path):
    """Issue 20: ``mammorg.fsdp`` shards each decoder layer (frozen weights and LoRA) with FSDP2 under
    torchrun (two gloo processes here); from the same aligned model it follows the DDP run: the
    same validation losses, the same merged model within Adam's sign noise."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    root, overrides = pipeline
    runs = {}
    for mode in ("fsdp", "ddp"):
        out = tmp_path / mode
        shutil.copytree(root / "run" / "mammorg" / "knowledge", out / "mammorg" / "knowledge")
        shutil.copytree(root / "run" / "mammorg" / "align", out / "mammorg" / "align")
        shutil.copytree(root / "run" / "mammorg" / "tokens", out / "mammorg" / "tokens")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = {**overrides, "run.out_dir": str(out), "sft.epochs": 1, "sft.batch_size_per_rank": 2,
                    "sft.gradient_checkpointing": True, "mammorg.fsdp": mode == "fsdp"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "training.cli", "mammorg-sft", "--config", str(CONFIG)]
        for key, value in settings.items():
            cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        cfg = load_train_config(CONFIG, settings)
        runs[mode] = (read_metrics(stage_dir(cfg, "sft") / "metrics.jsonl"),
                      torch.load(model_dir(cfg, "sft") / "model.pt", weights_only=True))
    val = {mode: [r["val_loss"] for r in records if "val_loss" in r] for mode, (records, _) in runs.items()}
    assert val["fsdp"] and val["fsdp"] == pytest.approx(val["ddp"], abs=1e-4)
    fsdp, ddp = runs["fsdp"][1], runs["ddp"][1]
    assert fsdp.keys() == ddp.keys()
    for key in fsdp:
        torch.testing.assert_close(fsdp[key], ddp[key], atol=2e-3, rtol=0)

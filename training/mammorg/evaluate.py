"""``mammo-train mammorg-eval``: generate reports for a split, parse them, score them.

Reports are generated from the saved model (greedy or beam, ``generate.*``), written as JSON
Lines ``{"id", "text"}`` beside the references (so ``mammo-eval reports`` can rescore them), and
scored with ``training.eval.report_metrics``: clinical efficacy (BI-RADS and density F1 with
their majority-class baselines, finding and relation F1) and NLG, with bootstrap intervals.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.mammorg.model import load_mammorg
from models.mammorg.config import preprocess_config
from training import distributed as du
from training.eval.report_metrics import evaluate_reports
from training.mammorg.common import model_dir, prepare, stage_dir
from training.config import TrainConfig


@torch.no_grad()
def generate_reports(model: Any, tokenizer: Any, tokens: torch.Tensor, present: torch.Tensor,
                     device: torch.device, batch: int, max_new_tokens: int, num_beams: int) -> list[str]:
    model = model.to(device).eval()
    texts: list[str] = []
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("generating", total=len(tokens))
        for start in range(0, len(tokens), batch):
            ids = model.generate(tokens[start:start + batch].to(device).float(), present[start:start + batch].to(device),
                                 max_new_tokens=max_new_tokens, num_beams=num_beams)
            texts.extend(tokenizer.decode(row, skip_special_tokens=True) for row in ids)
            bar.advance(task, len(ids))
    return texts


def run_mammorg_eval(cfg: TrainConfig, model_path: Path | None = None) -> dict[str, Any]:
    """Metrics of the SFT model (or ``model_path``) on ``eval.split``; writes predictions and metrics."""
    path = Path(model_path) if model_path else model_dir(cfg, "sft")
    model, tokenizer = load_mammorg(path)
    device = du.resolve_device(cfg.run.device)
    if model.vision is None:
        raise ValueError(f"{path}: the saved model has no vision encoder")
    data = prepare(cfg, model.vision, device, preprocess_config(model.cfg, model.vision.cfg), pool=model.cfg.vision_pool)
    idx = data.splits[cfg.eval.split]
    if not idx:
        raise ValueError(f"no studies in the {cfg.eval.split!r} split")
    g = cfg.generate
    texts = generate_reports(model, tokenizer, data.tokens[idx], data.present[idx], device, g.batch_size,
                             g.max_new_tokens, g.num_beams)
    ids = [data.studies[i].study_id for i in idx]
    preds = dict(zip(ids, texts))
    refs = {data.studies[i].study_id: data.studies[i].report for i in idx}
    report = evaluate_reports(preds, refs, resamples=cfg.eval.bootstrap, seed=cfg.run.seed)
    report.update({"model": str(path), "split": cfg.eval.split, "generation": {"max_new_tokens": g.max_new_tokens,
                                                                             "num_beams": g.num_beams}})
    out = stage_dir(cfg, "eval")
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"predictions-{cfg.eval.split}.jsonl").open("w", encoding="utf-8") as fh:
        for key in ids:
            fh.write(json.dumps({"id": key, "text": preds[key]}, ensure_ascii=False) + "\n")
    with (out / f"references-{cfg.eval.split}.jsonl").open("w", encoding="utf-8") as fh:
        for key in ids:
            fh.write(json.dumps({"id": key, "text": refs[key]}, ensure_ascii=False) + "\n")
    (out / f"metrics-{cfg.eval.split}.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report

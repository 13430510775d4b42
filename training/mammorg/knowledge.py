"""Stage 1, knowledge integration: the graph, cross-attention and retrieval modules learn through
classification heads on their tokens, as the paper describes.

Two probe sets, as the official ``DualProbing``: one on the per-view graph tokens (CC and MLO of
a breast concatenated for the breast heads, all four for the exam heads), one on the report
token. Heads: per breast density (4) and BI-RADS (9) with cross-entropy, finding status POS/NEG
(10, UNC and BLANK masked) with BCE; per exam the relation multi-labels with BCE. A set's loss is
the mean of its terms that have labels; the stage loss is the mean of the two sets. Targets come
from our parser run over the reference reports. The best epoch is chosen on the validation split.

The stage also builds the model: tokenizers, the language model (warmed up on the training
reports when it is built from config), graph-node features, the graph's edges (atlas table plus
the training reports' co-occurrence, ``models.mammorg.edges``) and the report bank.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.report import lexicon
from models.mammorg.model import MammoRG, build_mammorg, save_mammorg, set_bank
from models.mammorg.config import config_for
from models.mammorg.edges import graph_edges
from models.mammorg.knowledge import adjacency, graph_terms, term_text
from models.report.result import BIRADS_CATEGORIES, DENSITIES, MAMMORG_FINDINGS, ReportResult
from models.report.parse import split_sections
from training import distributed as du
from training.eval.classification import macro_f1
from training.mammorg.common import Prepared, encoder_preprocessing, load_vision, model_dir, prepare, stage_dir, text_embeddings
from training.mammorg.labels import RELATION_TAILS, StudyLabels, labels_from_reports, parse_reports
from training.mammorg.loop import StageSpec, run_stage
from training.mammorg.terms import init_term_rows
from training.mammorg.tokenizer import build_tokenizers
from training.config import TrainConfig

log = logging.getLogger(__name__)


class ProbeSet(nn.Module):
    """Per-side breast heads and exam-level relation heads over one kind of token."""

    def __init__(self, breast_in: int, exam_in: int) -> None:
        super().__init__()
        f = len(MAMMORG_FINDINGS)
        self.density = nn.ModuleList(nn.Linear(breast_in, len(DENSITIES)) for _ in range(2))
        self.birads = nn.ModuleList(nn.Linear(breast_in, len(BIRADS_CATEGORIES)) for _ in range(2))
        self.status = nn.ModuleList(nn.Linear(breast_in, f) for _ in range(2))
        self.relations = nn.ModuleDict({name: nn.Linear(exam_in, f * len(tails))
                                        for name, tails in RELATION_TAILS.items()})

    def forward(self, breast: tuple[torch.Tensor, torch.Tensor], exam: torch.Tensor) -> dict[str, torch.Tensor]:
        f = len(MAMMORG_FINDINGS)
        out = {"density": torch.stack([h(x) for h, x in zip(self.density, breast)], 1),
               "birads": torch.stack([h(x) for h, x in zip(self.birads, breast)], 1),
               "status": torch.stack([h(x) for h, x in zip(self.status, breast)], 1)}
        for name, head in self.relations.items():
            out[name] = head(exam).view(exam.shape[0], f, -1)
        return out


def probe_loss(out: dict[str, torch.Tensor], y: StudyLabels) -> torch.Tensor:
    terms = []
    for name, target in (("density", y.density), ("birads", y.birads)):
        keep = target >= 0
        if keep.any():
            terms.append(F.cross_entropy(out[name][keep].float(), target[keep]))
    if y.status_mask.any():
        bce = F.binary_cross_entropy_with_logits(out["status"].float(), y.status, reduction="none")
        terms.append((bce * y.status_mask).sum() / y.status_mask.sum())
    for name, target in y.relations.items():
        terms.append(F.binary_cross_entropy_with_logits(out[name].float(), target))
    return torch.stack(terms).mean()


class KnowledgeStage(nn.Module):
    """The trainable part of stage 1 (what resume restores) and its forward pass."""

    def __init__(self, model: MammoRG) -> None:
        super().__init__()
        dim = model.cfg.vision_dim
        self.graph, self.cross, self.retrieval = model.graph, model.cross, model.retrieval
        self.graph_probes = ProbeSet(2 * dim, 4 * dim)
        self.report_probes = ProbeSet(dim, dim)
        self._model = [model]  # not a submodule: the LM and the student stay out of this state

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        model = self._model[0]
        graph_tokens, report_token = model.knowledge(model.tokens(tokens, present))
        breasts = (graph_tokens[:, 0:2].flatten(1), graph_tokens[:, 2:4].flatten(1))  # R: CC+MLO, L: CC+MLO
        return {"graph": self.graph_probes(breasts, graph_tokens.flatten(1)),
                "report": self.report_probes((report_token, report_token), report_token)}


def _report_text(report: str) -> str:
    findings, impression = split_sections(report)
    return f"{findings} {impression}".strip() or report


def warm_up_lm(model: MammoRG, tokenizer: Any, texts: list[str], epochs: int, lr: float, seed: int,
               device: torch.device, batch: int = 16, max_tokens: int = 512) -> list[float]:
    """Plain next-token training of a config-built LM on the training reports; mean loss per epoch."""
    lm = model.lm.to(device).train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][: max_tokens - 2] for t in texts]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    history = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not du.is_main()) as bar:
        task = bar.add_task("LM warm-up", total=epochs * (len(encoded) // batch or 1))
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=g).tolist()
            losses = []
            for start in range(0, max(len(order) - batch + 1, 1), batch):
                seqs = [[bos] + encoded[i] + [eos] for i in order[start:start + batch]]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros(len(seqs), width, dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                labels = ids.masked_fill(mask == 0, -100)
                loss = lm(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                bar.advance(task)
            history.append(sum(losses) / len(losses))
    lm.eval()
    return history


def build_model(cfg: TrainConfig, data: Prepared, student: Any, device: torch.device) -> tuple[MammoRG, Any, dict[str, Any]]:
    """Tokenizers, model, (warmed-up LM), node features and bank, from the training split only."""
    m = cfg.mammorg
    out = stage_dir(cfg, "knowledge")
    train_reports = [data.studies[i].report for i in data.splits["train"]]
    base_tok, tokenizer, base_rows = build_tokenizers(out, train_reports, m.tokenizer_path, m.tokenizer_vocab,
                                                      m.terms_language)
    overrides: dict[str, Any] = {"knowledge": m.knowledge, "retrieval_temperature": m.retrieval_temperature,
                                 "vision_size": student.cfg.size, "vision_dim": student.cfg.student_dim,
                                 "vision_grid": student.cfg.student_grid // m.vision_pool, "vision_pool": m.vision_pool,
                                 "max_new_tokens": cfg.generate.max_new_tokens,
                                 "num_beams": cfg.generate.num_beams}
    if m.preprocessing != "student":
        overrides["preprocessing"] = encoder_preprocessing(cfg, student).to_dict()
    if m.lm_path is not None:
        overrides["lm_path"] = str(m.lm_path)
    if m.prompt is not None:
        overrides["prompt"] = m.prompt
    mcfg = replace(config_for(m.size, **overrides), base_vocab_size=base_rows)
    torch.manual_seed(cfg.run.seed)
    model = build_mammorg(mcfg, tokenizer, student)
    init_term_rows(model.lm, base_rows, seed=cfg.run.seed)
    info: dict[str, Any] = {"base_vocab": base_rows, "vocab": len(tokenizer)}
    if m.lm_path is None and m.lm_warmup_epochs:
        info["lm_warmup_loss"] = warm_up_lm(model, tokenizer, train_reports, m.lm_warmup_epochs, m.lm_warmup_lr,
                                            cfg.run.seed, device, max_tokens=m.max_report_tokens)
        log.info("LM warm-up loss per epoch: %s", info["lm_warmup_loss"])
    model.node_features.copy_(text_embeddings(model.lm, base_tok, [term_text(t) for t in graph_terms()]))
    info["graph"] = install_graph(model, cfg, parse_reports(train_reports), out)
    unique = sorted({_report_text(r) for r in train_reports})
    set_bank(model, text_embeddings(model.lm, base_tok, unique))
    info["bank_size"] = len(unique)
    return model.to(device), tokenizer, info


def install_graph(model: MammoRG, cfg: TrainConfig, train_results: list[ReportResult], out: Path) -> dict[str, Any]:
    """Build the graph's edges (``mammorg.graph_edges``) from the atlas table and the parsed
    training reports, install them as the model's adjacency, and list them with their sources in
    ``out/graph_edges.json`` (training split only, so no test report shapes the graph)."""
    m = cfg.mammorg
    edges = graph_edges(m.graph_edges, train_results, m.graph_min_count, m.graph_min_fraction)
    model.adjacency.copy_(adjacency(graph_terms(), edges).to(model.adjacency.device))
    per_relation = {r: sum(1 for e in edges if e.relation == r) for r in lexicon.RELATIONS}
    summary = {"mode": m.graph_edges, "min_count": m.graph_min_count, "min_fraction": m.graph_min_fraction,
               "edges": per_relation,
               "from_reports": sum(1 for e in edges if e.source.startswith("reports:"))}
    if du.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "graph_edges.json").write_text(json.dumps(
            {**summary, "list": [e._asdict() for e in edges]}, indent=1, ensure_ascii=False), encoding="utf-8")
    log.info("knowledge graph: %s", summary)
    return summary


@torch.no_grad()
def _predict(stage: KnowledgeStage, tokens: torch.Tensor, present: torch.Tensor, device: torch.device,
             batch: int = 64) -> dict[str, dict[str, torch.Tensor]]:
    outs: dict[str, dict[str, list[torch.Tensor]]] = {"graph": {}, "report": {}}
    for start in range(0, len(tokens), batch):
        out = stage(tokens[start:start + batch].to(device).float(), present[start:start + batch].to(device))
        for kind, heads in out.items():
            for name, value in heads.items():
                outs[kind].setdefault(name, []).append(value.float().cpu())
    return {kind: {k: torch.cat(v) for k, v in heads.items()} for kind, heads in outs.items()}


def probe_scores(stage: KnowledgeStage, tokens: torch.Tensor, present: torch.Tensor, y: StudyLabels,
                 device: torch.device) -> dict[str, float]:
    """Macro-F1 of density and BI-RADS (both probe sets) and the selection score (their mean)."""
    pred = _predict(stage, tokens, present, device)
    scores: dict[str, float] = {}
    for kind in ("graph", "report"):
        for name, target, n in (("density", y.density, len(DENSITIES)), ("birads", y.birads, len(BIRADS_CATEGORIES))):
            keep = target >= 0
            scores[f"{kind}_{name}_macro_f1"] = (macro_f1(target[keep].numpy(), pred[kind][name][keep].argmax(-1).numpy(), n)
                                                if keep.any() else float("nan"))
    values = [v for v in scores.values() if v == v]
    scores["score"] = sum(values) / len(values) if values else 0.0
    return scores


def run_knowledge(cfg: TrainConfig, *, max_iterations: int | None = None) -> Path:
    """Stage 1; returns the saved model directory."""
    return du.launched(cfg, lambda info: _run(cfg, info, max_iterations))


def _run(cfg: TrainConfig, info: du.DistInfo, max_iterations: int | None) -> Path:
    du.seed_everything(cfg.run.seed)
    device = info.device
    out = stage_dir(cfg, "knowledge")
    out.mkdir(parents=True, exist_ok=True)
    student = load_vision(cfg).to(device)
    data = prepare(cfg, student, device)
    model, tokenizer, build_info = build_model(cfg, data, student, device)
    y_all = labels_from_reports(parse_reports([s.report for s in data.studies]))
    stage = KnowledgeStage(model).to(device)
    train_idx = torch.tensor(data.splits["train"])
    val_idx = torch.tensor(data.splits["val"])
    best_file = out / "best_state.pt"

    def step(module: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        studies = train_idx[idx]
        y = y_all.index(studies).to(device)
        out_ = module(data.tokens[studies].to(device).float(), data.present[studies].to(device))
        graph, report = probe_loss(out_["graph"], y), probe_loss(out_["report"], y)
        return (graph + report) / 2, {"loss": ((graph + report) / 2).item(), "graph": graph.item(), "report": report.item()}

    def validate() -> dict[str, float]:
        if not len(val_idx):
            return {"score": 0.0}
        return probe_scores(stage, data.tokens[val_idx], data.present[val_idx], y_all.index(val_idx), device)

    def on_best(_: dict[str, float]) -> None:
        torch.save({k: v.detach().cpu() for k, v in stage.state_dict().items()}, best_file)

    k = cfg.knowledge
    trainable = [p for p in stage.parameters()]
    spec = StageSpec("knowledge", stage, trainable, len(train_idx), k.epochs, k.batch_size_per_rank, k.lr,
                     k.weight_decay, k.warmup_ratio, step, validate if model.cfg.knowledge else None, on_best)
    if not model.cfg.knowledge:
        log.info("mammorg.knowledge = false: no knowledge modules to train; saving the built model")
        best: dict[str, Any] = {"score": None}
    else:
        best = run_stage(spec, out, info, cfg.run.seed, cfg.run.precision, cfg.run.log_every, max_iterations)
    if du.is_main():
        if best_file.exists():
            stage.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
            torch.save({k_: v for k_, v in stage.state_dict().items() if "probes" in k_}, out / "probes.pt")
        save_mammorg(model, model_dir(cfg, "knowledge"), tokenizer,
                     extra={"stage": "knowledge", "best": best, **build_info, "selected_on": "val"})
    du.barrier()
    return model_dir(cfg, "knowledge")

"""Which source the node should report per field: the generated report or the classifier.

The node holds two opinions per breast: what MammoRG's report states and what VersaMammo's heads
say (mean of the breast's views, as ``node.results`` computes it). Where they disagree, the value
sent to PACS and RIS should be the one that is right more often. ``reporting_sources`` measures
both on the **validation** split with one definition (per breast, against the reference report
parsed by the project's parser; BI-RADS 4A/4B/4C merged as the classifier's classes are) and
returns the choice with its evidence, which export writes into the MammoRG package manifest
(``"reporting"``) for ``node.results`` to follow. Ties keep the report (what a radiologist reads).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES
from models.report.parse import parse_report
from training.eval.classification import macro_f1
from training.config import TrainConfig

FIELDS = ("density", "birads")


def _merged(birads: str | None) -> str | None:
    return None if birads is None or birads[0] not in "012345" else birads[0]


def _f1(truth: list[str | None], pred: list[str | None], classes: tuple[str, ...]) -> float:
    """Macro-F1 over the breasts whose reference states the field; an unstated prediction is wrong."""
    pairs = [(t, p) for t, p in zip(truth, pred) if t in classes]
    if not pairs:
        return float("nan")
    y = np.array([classes.index(t) for t, _ in pairs])
    yhat = np.array([classes.index(p) if p in classes else -1 for _, p in pairs])
    return macro_f1(y, yhat, len(classes))


def classifier_by_breast(student: Any, studies: list[Any], device: torch.device, cache: Any) -> dict[tuple[str, str], dict[str, str]]:
    """``{(study_id, side): {"density", "birads"}}``: argmax of the mean head probabilities of the views."""
    from models.preprocess import normalize
    from training.versamammo.distill.data import student_preprocess_config

    pre = student_preprocess_config(student.cfg)
    probs: dict[tuple[str, str], dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    student = student.to(device).eval()
    with torch.no_grad():
        for study in studies:
            for key, path in study.views.items():
                prepared = cache.get_or_prepare(path, pre, key[0])
                x = torch.from_numpy(normalize(prepared.image, pre))[None].to(device)
                out = student(x)
                for head in FIELDS:
                    probs[(study.study_id, key[0])][head].append(out[head].softmax(1)[0].float().cpu().numpy())
    return {breast: {"density": DENSITY_CLASSES[int(np.mean(p["density"], 0).argmax())],
                     "birads": BIRADS_CLASSES[int(np.mean(p["birads"], 0).argmax())]}
            for breast, p in probs.items()}


def choose(reference: dict[tuple[str, str], dict[str, str | None]], report: dict[tuple[str, str], dict[str, str | None]],
           classifier: dict[tuple[str, str], dict[str, str]]) -> dict[str, Any]:
    """The per-field choice and its evidence (macro-F1 of each source over the same breasts)."""
    keys = sorted(reference)
    out: dict[str, Any] = {"split": "val", "breasts": len(keys), "evidence": {}}
    for field_name, classes in (("density", DENSITY_CLASSES), ("birads", BIRADS_CLASSES)):
        norm = _merged if field_name == "birads" else (lambda v: v)
        truth = [norm(reference[k][field_name]) for k in keys]
        from_report = [norm(report.get(k, {}).get(field_name)) for k in keys]
        from_classifier = [classifier.get(k, {}).get(field_name) for k in keys]
        f_report, f_classifier = _f1(truth, from_report, classes), _f1(truth, from_classifier, classes)
        out["evidence"][field_name] = {"report_macro_f1": round(f_report, 4), "classifier_macro_f1": round(f_classifier, 4)}
        better = f_classifier > f_report or (np.isnan(f_report) and not np.isnan(f_classifier))
        out[field_name] = "classifier" if better else "report"
    return out


def reporting_sources(mcfg: TrainConfig, student_path: Path, model_dir: Path) -> dict[str, Any]:
    """Generate validation reports with the trained MammoRG, run the student on the same studies,
    and choose per field (see the module docstring)."""
    from models.mammorg.model import load_mammorg
    from models.mammorg.config import preprocess_config
    from models.versamammo.checkpoint import load_checkpoint
    from training import distributed as du
    from training.data.cache import PreprocessedCache
    from training.mammorg.common import prepare
    from training.mammorg.evaluate import generate_reports

    device = du.resolve_device(mcfg.run.device)
    model, tokenizer = load_mammorg(model_dir)
    data = prepare(mcfg, model.vision, device, preprocess_config(model.cfg, model.vision.cfg), pool=model.cfg.vision_pool)
    idx = data.splits["val"]
    if not idx:
        raise ValueError("no validation studies to choose the reporting sources on")
    g = mcfg.generate
    texts = generate_reports(model, tokenizer, data.tokens[idx], data.present[idx], device, g.batch_size,
                             g.max_new_tokens, g.num_beams)
    studies = [data.studies[i] for i in idx]
    reference, report = {}, {}
    for study, text in zip(studies, texts):
        ref, gen = parse_report(study.report), parse_report(text)
        for side in ("R", "L"):
            reference[(study.study_id, side)] = {"density": ref.breasts[side].density, "birads": ref.breasts[side].birads}
            report[(study.study_id, side)] = {"density": gen.breasts[side].density, "birads": gen.breasts[side].birads}
    cache = PreprocessedCache(mcfg.data.cache_dir) if mcfg.data.cache_dir else _NoCache()
    classifier = classifier_by_breast(load_checkpoint(student_path, kind="student"), studies, device, cache)
    return choose(reference, report, classifier)


class _NoCache:
    """``get_or_prepare`` without a cache folder."""

    def get_or_prepare(self, path: Path, cfg: TrainConfig, laterality: str | None = None) -> Any:
        import pydicom

        from models.preprocess import prepare_uint8

        return prepare_uint8(pydicom.dcmread(path), cfg, laterality)

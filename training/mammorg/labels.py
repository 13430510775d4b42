"""Stage-1 targets, produced by our report parser from the reference reports (as the paper's
MammoRGTool produces them): per breast density (4), BI-RADS (9) and each finding's status
(POS 1 / NEG 0, UNC and BLANK masked); per exam the relation multi-labels finding x location,
finding x assessment (BI-RADS or diagnosis) and finding x descriptor over the MammoRG terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.report import lexicon
from models.report.result import BIRADS_CATEGORIES, DENSITIES, MAMMORG_FINDINGS, ReportResult
from models.report.parse import parse_report

SIDES = ("R", "L")


def _mammorg_ids(*categories: str) -> tuple[str, ...]:
    return tuple(t.id for t in lexicon.terms() if t.mammorg and t.category in categories)


RELATION_TAILS: dict[str, tuple[str, ...]] = {
    "located_at": _mammorg_ids("location"),
    "suggestive_of": _mammorg_ids("birads", "diagnosis"),
    "modified_by": _mammorg_ids("descriptor"),
}


@dataclass
class StudyLabels:
    """Tensors over N studies; -1 marks a missing class label, ``status_mask`` the usable statuses."""

    density: torch.Tensor        # (N, 2) long, sides R, L
    birads: torch.Tensor         # (N, 2) long, index into BIRADS_CATEGORIES
    status: torch.Tensor         # (N, 2, 10) float 1 POS / 0 NEG
    status_mask: torch.Tensor    # (N, 2, 10) float
    relations: dict[str, torch.Tensor]  # name -> (N, 10, tails) float

    def index(self, idx: torch.Tensor) -> "StudyLabels":
        return StudyLabels(self.density[idx], self.birads[idx], self.status[idx], self.status_mask[idx],
                           {k: v[idx] for k, v in self.relations.items()})

    def to(self, device: torch.device) -> "StudyLabels":
        return StudyLabels(self.density.to(device), self.birads.to(device), self.status.to(device),
                           self.status_mask.to(device), {k: v.to(device) for k, v in self.relations.items()})


def labels_from_reports(results: list[ReportResult]) -> StudyLabels:
    n, f = len(results), len(MAMMORG_FINDINGS)
    density = torch.full((n, 2), -1, dtype=torch.long)
    birads = torch.full((n, 2), -1, dtype=torch.long)
    status = torch.zeros(n, 2, f)
    mask = torch.zeros(n, 2, f)
    relations = {name: torch.zeros(n, f, len(tails)) for name, tails in RELATION_TAILS.items()}
    for i, result in enumerate(results):
        for s, side in enumerate(SIDES):
            breast = result.breasts[side]
            if breast.density in DENSITIES:
                density[i, s] = DENSITIES.index(breast.density)
            if breast.birads in BIRADS_CATEGORIES:
                birads[i, s] = BIRADS_CATEGORIES.index(breast.birads)
            for k, kind in enumerate(MAMMORG_FINDINGS):
                value = breast.findings[kind].status
                if value in ("POS", "NEG"):
                    status[i, s, k] = 1.0 if value == "POS" else 0.0
                    mask[i, s, k] = 1.0
        for head, relation, tail in result.relations:
            tails = RELATION_TAILS.get(relation, ())
            if head in MAMMORG_FINDINGS and tail in tails:
                relations[relation][i, MAMMORG_FINDINGS.index(head), tails.index(tail)] = 1.0
    return StudyLabels(density, birads, status, mask, relations)


def parse_reports(texts: list[str]) -> list[ReportResult]:
    return [parse_report(t) for t in texts]

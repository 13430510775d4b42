"""The structured result of a mammography report: what the parser returns, what metrics compare,
and what the node encodes in DICOM SR and HL7.

Per breast: density (ACR A-D), BI-RADS (0, 1, 2, 3, 4A, 4B, 4C, 5, 6), and a status for each
of MammoRG's ten findings (POS present, NEG explicitly absent, UNC uncertain, BLANK not
mentioned) with the locations and descriptors the report gives. Plus relation triples
(finding, located_at | suggestive_of | modified_by, term) as MammoRGTool extracts them.
Term identifiers are those of ``models.report.lexicon``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Side = Literal["R", "L"]
Status = Literal["POS", "NEG", "UNC", "BLANK"]
STATUSES: tuple[str, ...] = ("POS", "NEG", "UNC", "BLANK")
BIRADS_CATEGORIES: tuple[str, ...] = ("0", "1", "2", "3", "4A", "4B", "4C", "5", "6")
DENSITIES: tuple[str, ...] = ("A", "B", "C", "D")
# MammoRG's ten findings (lexicon ids).
MAMMORG_FINDINGS: tuple[str, ...] = (
    "calcification", "mass", "hyperplasia", "skin_thickening", "enlarged_lymph_node",
    "nipple_retraction", "architectural_distortion", "thickened_cooper_ligament", "nodule", "asymmetry",
)
RELATIONS: tuple[str, ...] = ("located_at", "suggestive_of", "modified_by")


@dataclass
class FindingResult:
    """One finding in one breast."""

    kind: str  # a MAMMORG_FINDINGS id
    status: str = "BLANK"  # one of STATUSES
    locations: list[str] = field(default_factory=list)  # lexicon location ids
    descriptors: list[str] = field(default_factory=list)  # lexicon descriptor ids
    box: list[float] | None = None  # image region, when a model gives one
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "status": self.status, "locations": list(self.locations),
                                "descriptors": list(self.descriptors)}
        if self.box is not None:
            data["box"] = list(self.box)
        if self.score is not None:
            data["score"] = self.score
        return data


@dataclass
class BreastResult:
    """Everything the report says about one breast."""

    density: str | None = None  # A-D
    birads: str | None = None  # one of BIRADS_CATEGORIES
    findings: dict[str, FindingResult] = field(
        default_factory=lambda: {k: FindingResult(k) for k in MAMMORG_FINDINGS})

    def to_dict(self) -> dict[str, Any]:
        return {"density": self.density, "birads": self.birads,
                "findings": {k: f.to_dict() for k, f in self.findings.items()}}


@dataclass
class ReportResult:
    """A parsed report."""

    breasts: dict[str, BreastResult] = field(default_factory=lambda: {"R": BreastResult(), "L": BreastResult()})
    relations: list[tuple[str, str, str]] = field(default_factory=list)  # (finding id, relation, term id)
    findings_text: str = ""
    impression_text: str = ""
    language: str = "en"  # "en" | "zh"

    def to_dict(self) -> dict[str, Any]:
        return {"breasts": {side: b.to_dict() for side, b in self.breasts.items()},
                "relations": [list(t) for t in self.relations],
                "findings_text": self.findings_text, "impression_text": self.impression_text,
                "language": self.language}

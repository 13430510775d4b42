"""Phantom ground truth: breast density, lesion sampling and the BI-RADS rules.

The labels are sampled *before* any pixel is drawn; the renderer then draws exactly what
the labels say, so the labels are the truth by construction.

BI-RADS rules (per finding; a breast takes the most severe of its findings, none -> "1").
Severity order, least to most: 1 < 2 < 3 < 0 < 4A < 4B < 4C < 5 ("0" ranks above "3"
because an unresolved asymmetry must be worked up before a probably-benign call, but
below any suspicious finding, which goes to biopsy regardless).

* mass (a fat-containing mass is characteristically benign whatever else it shows)
    - density "fat_containing" (oval/round, circumscribed)     -> 2
    - oval/round + circumscribed                              -> 3
    - oval/round + obscured or microlobulated                 -> 4A
    - oval/round + indistinct                                 -> 4B
    - irregular + circumscribed, obscured or microlobulated   -> 4B
    - irregular + indistinct                                  -> 4C
    - oval/round + spiculated                                 -> 4C
    - irregular + spiculated                                  -> 5
* calcification (morphology, distribution)
    - round or coarse ("popcorn-like"), any distribution      -> 2
    - punctate, diffuse or regional                           -> 2
    - punctate, grouped                                       -> 3
    - amorphous, regional or diffuse                          -> 4A
    - amorphous, grouped/linear/segmental                     -> 4B
    - coarse heterogeneous                                    -> 4B
    - fine pleomorphic                                        -> 4C
    - fine linear branching, grouped                          -> 4C
    - fine linear branching, linear or segmental              -> 5
* architectural distortion (no surgical history in a phantom) -> 4B
* asymmetry, subtype "asymmetry" (seen on one view only)      -> 0 (recall for work-up)
* asymmetry, subtype "focal_asymmetry" (both views, no
  associated mass, calcification or distortion)               -> 3

Category 6 (known cancer) is never used: these are screening exams.

Every mass also carries the BI-RADS mass *density* descriptor ("high", "equal", "low",
"fat_containing"). Apart from the fat-containing rule above it does not change the category;
it is sampled from frequencies that depend on the category the shape and margin give
(``MASS_DENSITY_FREQ``, derived in docs/phantom.md "Calibration and sources (version 2)").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

DENSITIES = ("A", "B", "C", "D")
# Achieved fibroglandular area fraction aimed at, per ACR composition class.
DENSITY_TARGETS: dict[str, tuple[float, float]] = {
    "A": (0.04, 0.15),
    "B": (0.18, 0.38),
    "C": (0.42, 0.62),
    "D": (0.66, 0.85),
}
DENSITY_WEIGHTS = (0.12, 0.38, 0.38, 0.12)

BIRADS_ORDER = ("1", "2", "3", "0", "4A", "4B", "4C", "5")
QUADRANTS = ("UOQ", "UIQ", "LOQ", "LIQ", "central", "subareolar")
QUADRANT_WEIGHTS = (0.45, 0.15, 0.12, 0.08, 0.12, 0.08)
DEPTHS = ("anterior", "middle", "posterior")
# Depth as u = fraction of the nipple-to-chest-wall distance, 0 at the nipple.
DEPTH_RANGES = {"anterior": (0.12, 0.32), "middle": (0.37, 0.62), "posterior": (0.67, 0.84)}

# Clock positions strictly inside each quadrant (12, 3, 6 and 9 o'clock are boundaries),
# as seen facing the patient: the right breast's outer half is 6-12 o'clock.
CLOCKS: dict[str, dict[str, tuple[int, ...]]] = {
    "R": {"UOQ": (10, 11), "UIQ": (1, 2), "LIQ": (4, 5), "LOQ": (7, 8)},
    "L": {"UOQ": (1, 2), "UIQ": (10, 11), "LOQ": (4, 5), "LIQ": (7, 8)},
}

MASS_SHAPES = ("oval", "round", "irregular")
MASS_MARGINS = ("circumscribed", "obscured", "microlobulated", "indistinct", "spiculated")
MASS_DENSITIES = ("high", "equal", "low", "fat_containing")
# Mass density given malignancy. Cancers: 70 % denser than fibroglandular tissue, 28 % equal,
# 2 % less dense (the figures cited for Cory & Linden, AJR 1993;160:418-419; the paper itself
# could not be checked). Benign biopsied masses: the share of
# high density that reproduces Woods et al. (Radiology 2011;258:417-425: 70.2 % of high-density
# and 22.3 % of iso- or low-density masses malignant, i.e. an odds ratio of 8.2) with the cancer
# share above: 22 %; the rest split 2:1 equal:low (benign masses are usually isodense or less
# dense; no published split was found, see docs/phantom.md).
_DENSITY_GIVEN_MALIGNANT = {"high": 0.70, "equal": 0.28, "low": 0.02}
_DENSITY_GIVEN_BENIGN = {"high": 0.22, "equal": 0.52, "low": 0.26}
# Likelihood of malignancy per category: the middle of the ACR BI-RADS Atlas 5th ed. ranges
# (3: <=2 %, 4A: >2-10 %, 4B: >10-50 %, 4C: >50-<95 %, 5: >=95 %).
_MALIGNANCY = {"3": 0.01, "4A": 0.06, "4B": 0.30, "4C": 0.725, "5": 0.975}


def _mass_density_freq(p_malignant: float) -> dict[str, float]:
    """P(density | category) = p * P(density | malignant) + (1 - p) * P(density | benign)."""
    return {k: p_malignant * _DENSITY_GIVEN_MALIGNANT[k] + (1.0 - p_malignant) * _DENSITY_GIVEN_BENIGN[k]
            for k in _DENSITY_GIVEN_MALIGNANT}


MASS_DENSITY_FREQ: dict[str, dict[str, float]] = {c: _mass_density_freq(p) for c, p in _MALIGNANCY.items()}

CALC_MORPHOLOGIES = (
    "round", "coarse", "punctate", "amorphous", "coarse_heterogeneous",
    "fine_pleomorphic", "fine_linear_branching",
)
CALC_DISTRIBUTIONS = ("diffuse", "regional", "grouped", "linear", "segmental")
ASYMMETRY_SUBTYPES = ("asymmetry", "focal_asymmetry")

# One block of 20 consecutive studies always holds this mix (shuffled per seed/block), so
# any 20-study set has variety while most studies stay normal or benign.
SCENARIO_BLOCK = (
    ("1",) * 7 + ("2",) * 4 + ("3",) * 2 + ("0",) * 1
    + ("4A",) * 2 + ("4B",) * 2 + ("4C",) * 1 + ("5",) * 1
)


def birads_rank(category: str) -> int:
    """Severity rank of a BI-RADS category (see module docstring for the order)."""
    return BIRADS_ORDER.index(category)


def worst_birads(categories: Sequence[str]) -> str:
    """Most severe category; "1" (negative) when there is nothing."""
    return max(categories, key=birads_rank, default="1")


@dataclass(frozen=True)
class Location:
    quadrant: str
    clock: int | None
    depth: str

    def to_json(self) -> dict[str, Any]:
        return {"quadrant": self.quadrant, "clock": self.clock, "depth": self.depth}


@dataclass
class Finding:
    """One lesion: BI-RADS descriptors plus the hidden 3-D placement the renderer uses.

    ``u`` is the depth as a fraction of the nipple-to-chest-wall distance (0 = nipple),
    ``r`` the radial offset from the nipple axis as a fraction of the local half-width,
    ``angle_deg`` the clock angle (clockwise from 12 o'clock, facing the patient).
    """

    id: str
    laterality: str
    kind: str
    descriptors: dict[str, str]
    location: Location
    size_mm: float
    u: float
    r: float
    angle_deg: float
    seed: int
    seen_in: tuple[str, ...] = ("CC", "MLO")
    boxes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def birads(self) -> str:
        return finding_birads(self.kind, self.descriptors)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        out.update(self.descriptors)
        out["location"] = self.location.to_json()
        out["size_mm"] = round(self.size_mm, 1)
        out["birads"] = self.birads
        out["visible_in"] = [f"{self.laterality}-{v}" for v in self.seen_in]
        out["boxes"] = {k: list(v) for k, v in self.boxes.items()}
        return out


def finding_birads(kind: str, d: dict[str, str]) -> str:
    """Apply the per-finding rules of the module docstring."""
    if kind == "mass":
        if d.get("density") == "fat_containing":
            return "2"
        shape, margin = d["shape"], d["margin"]
        if shape == "irregular":
            return {"spiculated": "5", "indistinct": "4C"}.get(margin, "4B")
        return {"circumscribed": "3", "obscured": "4A", "microlobulated": "4A",
                "indistinct": "4B", "spiculated": "4C"}[margin]
    if kind == "calcification":
        morph, dist = d["morphology"], d["distribution"]
        if morph in ("round", "coarse"):
            return "2"
        if morph == "punctate":
            return "3" if dist == "grouped" else "2"
        if morph == "amorphous":
            return "4A" if dist in ("regional", "diffuse") else "4B"
        if morph == "coarse_heterogeneous":
            return "4B"
        if morph == "fine_pleomorphic":
            return "4C"
        if morph == "fine_linear_branching":
            return "5" if dist in ("linear", "segmental") else "4C"
        raise ValueError(f"unknown calcification morphology {morph!r}")
    if kind == "architectural_distortion":
        return "4B"
    if kind == "asymmetry":
        return "0" if d["subtype"] == "asymmetry" else "3"
    raise ValueError(f"unknown finding kind {kind!r}")


# Descriptor recipes per target category: (kind, descriptors) options, all checked
# against finding_birads when sampled.
_RECIPES: dict[str, list[tuple[str, dict[str, str]]]] = {
    "2": [("calcification", {"morphology": m, "distribution": d})
          for m in ("round", "coarse") for d in ("diffuse", "regional", "grouped")]
    + [("calcification", {"morphology": "punctate", "distribution": d}) for d in ("diffuse", "regional")]
    + [("mass", {"shape": s, "margin": "circumscribed", "density": "fat_containing"}) for s in ("oval", "round")],
    "3": [("mass", {"shape": s, "margin": "circumscribed"}) for s in ("oval", "oval", "round")]
    + [("calcification", {"morphology": "punctate", "distribution": "grouped"}),
       ("asymmetry", {"subtype": "focal_asymmetry"})],
    "0": [("asymmetry", {"subtype": "asymmetry"})],
    "4A": [("mass", {"shape": s, "margin": m}) for s in ("oval", "round") for m in ("obscured", "microlobulated")]
    + [("calcification", {"morphology": "amorphous", "distribution": "regional"})],
    "4B": [("mass", {"shape": s, "margin": "indistinct"}) for s in ("oval", "round")]
    + [("mass", {"shape": "irregular", "margin": m}) for m in ("circumscribed", "obscured", "microlobulated")]
    + [("calcification", {"morphology": "amorphous", "distribution": d}) for d in ("grouped", "segmental")]
    + [("calcification", {"morphology": "coarse_heterogeneous", "distribution": d}) for d in ("grouped", "regional")]
    + [("architectural_distortion", {}), ("architectural_distortion", {})],
    "4C": [("mass", {"shape": "irregular", "margin": "indistinct"}),
           ("mass", {"shape": "oval", "margin": "spiculated"})]
    + [("calcification", {"morphology": "fine_pleomorphic", "distribution": d})
       for d in ("grouped", "linear", "segmental")]
    + [("calcification", {"morphology": "fine_linear_branching", "distribution": "grouped"})],
    "5": [("mass", {"shape": "irregular", "margin": "spiculated"}),
          ("mass", {"shape": "irregular", "margin": "spiculated"}),
          ("calcification", {"morphology": "fine_linear_branching", "distribution": "linear"}),
          ("calcification", {"morphology": "fine_linear_branching", "distribution": "segmental"})],
}


def _size_mm(rng: np.random.Generator, kind: str, d: dict[str, str]) -> float:
    """Plausible lesion size (mm): mass diameter, calcification extent, etc."""
    if kind == "mass":
        lo, hi = (5.0, 18.0) if d["margin"] == "circumscribed" else (7.0, 30.0)
        return float(rng.uniform(lo, hi))
    if kind == "calcification":
        lo, hi = {"grouped": (4.0, 10.0), "linear": (10.0, 25.0), "segmental": (20.0, 40.0),
                  "regional": (25.0, 45.0), "diffuse": (60.0, 90.0)}[d["distribution"]]
        return float(rng.uniform(lo, hi))
    if kind == "architectural_distortion":
        return float(rng.uniform(12.0, 30.0))
    lo, hi = (12.0, 28.0) if d["subtype"] == "focal_asymmetry" else (20.0, 40.0)
    return float(rng.uniform(lo, hi))


def _sample_location(
    rng: np.random.Generator, laterality: str, kind: str, d: dict[str, str], size_mm: float,
) -> tuple[Location, float, float, float]:
    """Quadrant, clock and depth plus the hidden (u, r, angle) that realise them."""
    if kind == "calcification" and d["distribution"] == "diffuse":
        return Location("central", None, "middle"), 0.5, 0.0, float(rng.uniform(0, 360))
    quadrant = str(rng.choice(QUADRANTS, p=QUADRANT_WEIGHTS))
    if quadrant == "subareolar" and size_mm > 20.0:
        quadrant = "central"
    if quadrant == "subareolar":
        u = float(rng.uniform(0.05, 0.14))
        return Location("subareolar", None, "anterior"), u, float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 360))
    if quadrant == "central":
        depth = str(rng.choice(("middle", "posterior")))
        u = float(rng.uniform(*DEPTH_RANGES[depth]))
        return Location("central", None, depth), u, float(rng.uniform(0.0, 0.2)), float(rng.uniform(0, 360))
    depth = str(rng.choice(DEPTHS, p=(0.3, 0.45, 0.25)))
    clock = int(rng.choice(CLOCKS[laterality][quadrant]))
    angle = clock * 30.0 + float(rng.uniform(-10.0, 10.0))
    u = float(rng.uniform(*DEPTH_RANGES[depth]))
    return Location(quadrant, clock, depth), u, float(rng.uniform(0.35, 0.75)), angle


def clock_quadrant(clock: int, laterality: str) -> str | None:
    """Quadrant of an interior clock position for that breast (None on a boundary)."""
    for quadrant, clocks in CLOCKS[laterality].items():
        if clock in clocks:
            return quadrant
    return None


def lateral_superior(angle_deg: float, laterality: str) -> tuple[float, float]:
    """Unit (lateral, superior) components of a clock angle for that breast.

    Facing the patient, 9 o'clock points to the patient's right, so "lateral" is the
    9 o'clock direction for the right breast and the 3 o'clock direction for the left.
    """
    a = math.radians(angle_deg)
    sup = math.cos(a)
    lat = -math.sin(a) if laterality == "R" else math.sin(a)
    return lat, sup


def _make_finding(
    rng: np.random.Generator, fid: str, laterality: str, kind: str, d: dict[str, str],
) -> Finding:
    size = _size_mm(rng, kind, d)
    loc, u, r, angle = _sample_location(rng, laterality, kind, d, size)
    seen: tuple[str, ...] = ("CC", "MLO")
    if kind == "asymmetry" and d["subtype"] == "asymmetry":
        seen = (str(rng.choice(("CC", "MLO"))),)
    seed = int(rng.integers(0, 2**31 - 1))
    descriptors = dict(d)
    if kind == "mass" and "density" not in descriptors:
        descriptors["density"] = sample_mass_density(rng, finding_birads(kind, descriptors))
    return Finding(id=fid, laterality=laterality, kind=kind, descriptors=descriptors, location=loc,
                   size_mm=size, u=u, r=r, angle_deg=angle, seed=seed, seen_in=seen)


def sample_mass_density(rng: np.random.Generator, category: str) -> str:
    """A BI-RADS mass density for a (non-fat) mass of that category, from MASS_DENSITY_FREQ."""
    freq = MASS_DENSITY_FREQ[category]
    names = tuple(freq)
    return str(rng.choice(names, p=np.array([freq[k] for k in names]) / sum(freq.values())))


@dataclass
class BreastLabels:
    laterality: str
    density: str
    target_fraction: float
    findings: list[Finding]
    dense_fraction: float = float("nan")  # filled in by the renderer (achieved value)

    @property
    def birads(self) -> str:
        return worst_birads([f.birads for f in self.findings])

    def to_json(self) -> dict[str, Any]:
        return {"density": self.density, "dense_fraction": round(float(self.dense_fraction), 3),
                "birads": self.birads, "findings": [f.to_json() for f in self.findings]}


def study_scenario(seed: int, index: int) -> str:
    """Target overall category of study ``index``: a per-seed shuffle of SCENARIO_BLOCK."""
    block = np.random.default_rng([seed, index // len(SCENARIO_BLOCK), 0x5CE0])
    order = block.permutation(len(SCENARIO_BLOCK))
    return SCENARIO_BLOCK[int(order[index % len(SCENARIO_BLOCK)])]


def sample_labels(seed: int, index: int) -> dict[str, BreastLabels]:
    """Density and findings of both breasts of study (seed, index), deterministically."""
    rng = np.random.default_rng([seed, index, 0x1AB])
    target = study_scenario(seed, index)
    density = str(rng.choice(DENSITIES, p=DENSITY_WEIGHTS))
    findings: dict[str, list[Finding]] = {"R": [], "L": []}
    if target != "1":
        side = str(rng.choice(("R", "L")))
        kind, d = _RECIPES[target][int(rng.integers(len(_RECIPES[target])))]
        lead = _make_finding(rng, f"{side}1", side, kind, d)
        assert lead.birads == target, (lead.kind, lead.descriptors, target)
        findings[side].append(lead)
        # An incidental benign finding sometimes accompanies a positive study.
        if rng.random() < 0.3:
            other = str(rng.choice(("R", "L")))
            kind, d = _RECIPES["2"][int(rng.integers(len(_RECIPES["2"])))]
            findings[other].append(_make_finding(rng, f"{other}{len(findings[other]) + 1}", other, kind, d))
        # A second probably-benign mass in the same breast now and then.
        if target in ("4B", "4C", "5") and rng.random() < 0.25:
            kind, d = _RECIPES["3"][0]
            findings[side].append(_make_finding(rng, f"{side}{len(findings[side]) + 1}", side, kind, d))
    out = {}
    for side in ("R", "L"):
        lo, hi = DENSITY_TARGETS[density]
        out[side] = BreastLabels(side, density, float(rng.uniform(lo, hi)), findings[side])
    return out

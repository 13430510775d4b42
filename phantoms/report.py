"""Reference screening report for a phantom study, written from its labels JSON alone.

Two sections, headed exactly ``FINDINGS:`` and ``IMPRESSION:``, in BI-RADS Atlas
vocabulary. Descriptor values appear in the text with underscores read as spaces
("fine_linear_branching" -> "fine linear branching"), every finding gets one sentence naming
its breast, and the impression has one ``<Side> breast: BI-RADS <cat> - <name>.`` line per
breast, so the text stays machine-checkable while the sentence templates vary with the seed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from phantoms.labels import BIRADS_ORDER, worst_birads

COMPOSITION = {
    "A": "The breasts are almost entirely fatty.",
    "B": "There are scattered areas of fibroglandular density.",
    "C": "The breasts are heterogeneously dense, which may obscure small masses.",
    "D": "The breasts are extremely dense, which lowers the sensitivity of mammography.",
}
COMPOSITION_ONE = {
    "A": "the {side} breast is almost entirely fatty",
    "B": "the {side} breast has scattered areas of fibroglandular density",
    "C": "the {side} breast is heterogeneously dense, which may obscure small masses",
    "D": "the {side} breast is extremely dense, which lowers the sensitivity of mammography",
}
ASSESSMENT = {
    "0": "incomplete - need additional imaging evaluation",
    "1": "negative",
    "2": "benign",
    "3": "probably benign",
    "4A": "low suspicion for malignancy",
    "4B": "moderate suspicion for malignancy",
    "4C": "high suspicion for malignancy",
    "5": "highly suggestive of malignancy",
}
QUADRANT_TEXT = {
    "UOQ": "upper outer quadrant", "UIQ": "upper inner quadrant",
    "LOQ": "lower outer quadrant", "LIQ": "lower inner quadrant",
    "central": "central region", "subareolar": "subareolar region",
}
SIDE = {"R": "right", "L": "left"}
# BI-RADS mass density as written before "mass" (models/lexicon reads all four).
MASS_DENSITY_TEXT = {"high": "high density ", "equal": "equal density ", "low": "low density ",
                     "fat_containing": "fat-containing "}

_TECHNIQUE = (
    "Bilateral digital screening mammography with standard craniocaudal and mediolateral oblique views.",
    "Standard CC and MLO views of both breasts were obtained.",
    "Digital screening mammogram, four standard views.",
)
_FINDING = (
    "In the {side} breast, {loc}, there {be} {desc}{tail}.",
    "{Desc} {be} seen in the {side} breast, {loc}{tail}.",
    "{Side} breast, {loc}: {desc}{tail}.",
)
_NEGATIVE = (
    "No suspicious {what} in the {side} breast.",
    "The {side} breast shows no suspicious {what}.",
)
_ROUTINE = (
    "Recommend routine screening mammography in 1 year.",
    "Continue routine annual screening mammography.",
)


def words(value: str) -> str:
    return value.replace("_", " ")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou8" or phrase.startswith(("11 ", "18 ")) else "a ") + phrase


def location_text(loc: dict[str, Any]) -> str:
    """e.g. "upper outer quadrant at 10 o'clock, middle depth"."""
    text = QUADRANT_TEXT[loc["quadrant"]]
    if loc.get("clock") is not None:
        text += f" at {loc['clock']} o'clock"
    return f"{text}, {loc['depth']} depth"


def finding_text(f: dict[str, Any]) -> tuple[str, str]:
    """(noun phrase, trailing clause) for one finding, e.g.
    ("a 9 mm oval high density mass with circumscribed margins", "")."""
    size = f"{round(f['size_mm']):d} mm"
    kind = f["kind"]
    if kind == "mass":
        density = MASS_DENSITY_TEXT.get(f.get("density", ""), "")
        return _article(f"{size} {words(f['shape'])} {density}mass with {words(f['margin'])} margins"), ""
    if kind == "calcification":
        morph = "coarse (popcorn-like)" if f["morphology"] == "coarse" else words(f["morphology"])
        return f"{morph} calcifications in {_article(words(f['distribution']))} distribution", f", spanning {size}"
    if kind == "architectural_distortion":
        return f"architectural distortion spanning {size}", ", without a central mass"
    if f["subtype"] == "asymmetry":
        seen = " and ".join(v.split("-", 1)[1] for v in f.get("visible_in", [])) or "one"
        return f"an asymmetry measuring {size}", f", seen only on the {seen} view"
    return _article(f"{size} focal asymmetry"), " without associated calcifications or distortion"


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _negative_terms(findings: list[dict[str, Any]]) -> list[str]:
    kinds = {f["kind"] for f in findings}
    return [term for kind, term in (("mass", "masses"), ("calcification", "calcifications"),
                                    ("architectural_distortion", "architectural distortion"))
            if kind not in kinds]


def _join(terms: list[str]) -> str:
    if len(terms) <= 2:
        return " or ".join(terms)
    return ", ".join(terms[:-1]) + ", or " + terms[-1]


def _recommendation(breasts: dict[str, dict[str, Any]], rng: np.random.Generator) -> str:
    overall = worst_birads([b["birads"] for b in breasts.values()])
    sides = [SIDE[s] for s in ("R", "L") if breasts[s]["birads"] == overall]
    where = "both breasts" if len(sides) == 2 else f"the {sides[0]} breast"
    if overall in ("1", "2"):
        return str(rng.choice(_ROUTINE))
    if overall == "3":
        return f"Short-interval follow-up diagnostic mammography of {where} in 6 months."
    if overall == "0":
        return (f"Recall for additional imaging evaluation of {where}"
                " (spot compression views and ultrasound as needed).")
    return f"Tissue sampling (image-guided biopsy) of {where} is recommended."


def make_report(labels: dict[str, Any]) -> str:
    """Report text for a labels dict (the labels.json content), phrasing seeded by it."""
    rng = np.random.default_rng([int(labels["seed"]), int(labels["index"]), 0x4E9])
    breasts = labels["breasts"]
    lines = ["FINDINGS:", str(rng.choice(_TECHNIQUE))]
    if breasts["R"]["density"] == breasts["L"]["density"]:
        lines.append(COMPOSITION[breasts["R"]["density"]])
    else:
        parts = [COMPOSITION_ONE[breasts[s]["density"]].format(side=SIDE[s]) for s in ("R", "L")]
        lines.append(_capitalize(parts[0]) + "; " + parts[1] + ".")
    for s in ("R", "L"):
        side = SIDE[s]
        for f in breasts[s]["findings"]:
            desc, tail = finding_text(f)
            if f["kind"] == "calcification" and f["distribution"] == "diffuse":
                morph = desc.split(" calcifications")[0]
                lines.append(f"{_capitalize(morph)} calcifications are scattered throughout the {side} breast"
                             f" in a diffuse distribution.")
                continue
            lines.append(str(rng.choice(_FINDING)).format(
                side=side, Side=_capitalize(side), loc=location_text(f["location"]), desc=desc,
                Desc=_capitalize(desc), tail=tail, be="are" if f["kind"] == "calcification" else "is"))
        terms = _negative_terms(breasts[s]["findings"])
        if terms:
            lines.append(str(rng.choice(_NEGATIVE)).format(what=_join(terms), side=side))
    lines += ["", "IMPRESSION:"]
    for s in ("R", "L"):
        cat = breasts[s]["birads"]
        lines.append(f"{_capitalize(SIDE[s])} breast: BI-RADS {cat} - {ASSESSMENT[cat]}.")
    overall = worst_birads([breasts[s]["birads"] for s in ("R", "L")])
    lines.append(f"Overall: BI-RADS {overall} - {ASSESSMENT[overall]}.")
    lines.append(_recommendation(breasts, rng))
    assert all(b["birads"] in BIRADS_ORDER for b in breasts.values())
    return "\n".join(lines) + "\n"

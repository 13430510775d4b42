"""Coded concepts for the SR encoders, from the shared lexicon (models.report.lexicon) and DICOM PS3.16.

One place maps our result vocabulary (BI-RADS "4B", density "C", finding and descriptor ids) to
codes, so TID 1500 and TID 4000 say the same thing the same way. Meanings are at most 64
characters (highdicom refuses longer ones).
"""
from __future__ import annotations

from typing import Any

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from models.report import lexicon

# BI-RADS 4A/4B/4C have no SNOMED CT code of their own: they are sent as the category-4 concept
# with a meaning that keeps the subcategory (docs/dicom-sr.md). Category 6 has none at all.
_BIRADS_SUB_MEANINGS = {
    "4A": "BI-RADS 4A: Low suspicion for malignancy",
    "4B": "BI-RADS 4B: Moderate suspicion for malignancy",
    "4C": "BI-RADS 4C: High suspicion for malignancy",
}
LOCAL_SCHEME = "99MAMMO"  # our private coding scheme, declared in CodingSchemeIdentificationSequence
LOCAL_SCHEME_NAME = "mammo-node local codes"

ASSESSMENT_CATEGORY = codes.DCM.AssessmentCategory  # DCM 111005
BREAST_COMPOSITION = CodedConcept("129715009", "SCT", "Breast composition")
FINDING = codes.DCM.Finding  # DCM 121071
# What the classifier gives per breast is a distribution over BI-RADS categories, not a probability
# of cancer (DCM 111047 would say that): the mass on categories 4 and 5 is sent under our own
# concept, named for what it is (docs/dicom-sr.md, issue 18.5).
SUSPICIOUS_BIRADS_PROBABILITY = CodedConcept("PBIRADS45", LOCAL_SCHEME, "Classifier probability of BI-RADS 4 or 5")
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # DCM 111012; value Possible for UNC findings
POSSIBLE = CodedConcept("371930009", "SCT", "Possible")
BREAST = codes.SCT.Breast
RIGHT, LEFT = codes.SCT.Right, codes.SCT.Left
PROCEDURE_MAMMOGRAPHY = codes.SCT.Mammography  # SCT 71651007
FINDINGS_TEXT = CodedConcept("121070", "DCM", "Findings")
IMPRESSION_TEXT = CodedConcept("121072", "DCM", "Impressions")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = CodedConcept("121106", "DCM", "Comment")
UNITLESS = CodedConcept("1", "UCUM", "no units")

# Which concept name a location or descriptor is reported under, by lexicon group.
LOCATION_NAMES = {
    "quadrant": codes.DCM.QuadrantLocation,  # DCM 111048
    "clock": codes.DCM.ClockfaceOrRegion,  # DCM 111014
    "region": codes.DCM.ClockfaceOrRegion,
    "depth": codes.DCM.Depth,  # DCM 111020
}
# Location groups whose terms are qualifiers (clock position, depth, direction) rather than parts
# of the breast: in TID 1500 they are topographical modifiers of the finding site; the others
# (quadrants, central/subareolar region, axillary tail, ...) are the site itself.
TOPOGRAPHICAL_GROUPS = ("clock", "depth")
TOPOGRAPHICAL_TERMS = ("upper", "lower", "outer", "inner")
DESCRIPTOR_NAMES = {
    "shape": CodedConcept("300842002", "SCT", "Shape"),
    "margin": codes.DCM.Margins,  # DCM 111037
    "mass_density": codes.DCM.LesionDensity,  # DCM 111035
    "calc_morphology": codes.DCM.CalcificationType,  # DCM 111009
    "calc_distribution": codes.DCM.CalcificationDistribution,  # DCM 111008
    "associated": CodedConcept("246090004", "SCT", "Associated finding"),
    "asymmetry_type": CodedConcept("116676008", "SCT", "Associated morphology"),
    "impression": CodedConcept("121073", "DCM", "Impression"),
}
OTHER_DESCRIPTOR = CodedConcept("116676008", "SCT", "Associated morphology")  # a group not listed above


def uses_local_scheme(ds: Any) -> bool:
    """Whether any content item of the tree uses our private scheme (it must then be declared in
    CodingSchemeIdentificationSequence)."""
    for item in ds.get("ContentSequence", []):
        for key in ("ConceptCodeSequence", "ConceptNameCodeSequence", "MeasurementUnitsCodeSequence"):
            if any(c.CodingSchemeDesignator == LOCAL_SCHEME for c in item.get(key, [])):
                return True
        for mv in item.get("MeasuredValueSequence", []):
            if any(c.CodingSchemeDesignator == LOCAL_SCHEME for c in mv.get("MeasurementUnitsCodeSequence", [])):
                return True
        if uses_local_scheme(item):
            return True
    return False


def side_code(side: str) -> CodedConcept:
    return CodedConcept(*((RIGHT if side == "R" else LEFT).value, "SCT",
                          "Right" if side == "R" else "Left"))


def term_concept(term_id: str) -> CodedConcept | None:
    """The lexicon term's preferred code, or None where the lexicon has none."""
    code = lexicon.code_for(term_id)
    if code is None:
        return None
    return CodedConcept(code["value"], code["scheme"], code["meaning"][:64])


def birads_concept(category: str) -> CodedConcept:
    """BI-RADS category ("0".."6", "4A".."4C") as a coded concept (see _BIRADS_SUB_MEANINGS)."""
    category = category.upper()
    if category in _BIRADS_SUB_MEANINGS:
        return CodedConcept("397144001", "SCT", _BIRADS_SUB_MEANINGS[category])
    concept = term_concept(lexicon.birads_term(category))
    if concept is None:  # category 6
        return CodedConcept("BIRADS6", LOCAL_SCHEME, "BI-RADS 6: Known biopsy-proven malignancy")
    return concept


def birads_from_concept(value: str, scheme: str, meaning: str) -> str | None:
    """Inverse of :func:`birads_concept` (the subcategory is read back from the meaning)."""
    if scheme == LOCAL_SCHEME and value == "BIRADS6":
        return "6"
    head = meaning.upper().split(":")[0].replace("BI-RADS", "").strip()
    if head in ("4A", "4B", "4C"):
        return head
    for cat in ("0", "1", "2", "3", "4", "5"):
        code = lexicon.code_for(lexicon.birads_term(cat))
        if code and code["value"] == value:
            return cat
    return None


def density_concept(letter: str) -> CodedConcept:
    concept = term_concept(lexicon.density_term(letter))
    assert concept is not None, letter
    return concept


def density_from_code(value: str) -> str | None:
    for letter in "ABCD":
        code = lexicon.code_for(lexicon.density_term(letter))
        if code and code["value"] == value:
            return letter
    return None


def term_from_code(value: str, scheme: str, category: str) -> str | None:
    """The lexicon id of the term of ``category`` with this code (first match)."""
    for term in lexicon.by_category(category):
        if any(c["value"] == value and c["scheme"] == scheme for c in term.codes):
            return term.id
    return None

IMAGE_LATERALITY = CodedConcept("111027", "DCM", "Image Laterality")
IMAGE_VIEW = CodedConcept("111031", "DCM", "Image View")
VIEW_CODES = {"CC": CodedConcept("399162004", "SCT", "cranio-caudal"),
              "MLO": CodedConcept("399368009", "SCT", "medio-lateral oblique")}


def view_concept(image_dataset: Any, view: str) -> CodedConcept:
    """The image's own view code when it has one (vendors' meanings kept), else ours for CC/MLO."""
    seq = image_dataset.get("ViewCodeSequence") if image_dataset is not None else None
    if seq:
        item = seq[0]
        return CodedConcept(item.CodeValue, item.CodingSchemeDesignator, str(item.CodeMeaning)[:64])
    return VIEW_CODES[view]


# CAD mark kinds (node.marks.KINDS) as lexicon findings: the codes of CID 6014 (Mammography Single
# Image Finding) that the TID 1500 findings use too.
MARK_TERMS = {"mass": "mass", "calcification": "calcification", "distortion": "architectural_distortion",
              "asymmetry": "asymmetry"}


def mark_concept(kind: str) -> CodedConcept:
    """The coded finding of a CAD mark of ``kind`` (a key of MARK_TERMS)."""
    concept = term_concept(MARK_TERMS[kind])
    assert concept is not None, kind
    return concept


def mark_kind(value: str, scheme: str) -> str | None:
    """Inverse of :func:`mark_concept`."""
    return next((k for k in MARK_TERMS if (c := mark_concept(k)).value == value and c.scheme_designator == scheme),
                None)

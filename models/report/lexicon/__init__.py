"""The mammography vocabulary shared by the report parser, the metrics, MammoRG's tokenizer and
the DICOM SR / HL7 encoders.

Every term has a snake_case id, a category (density | birads | finding | location | descriptor |
diagnosis), English and Chinese surface forms and, where one could be verified, codes
(SNOMED CT "SCT", DICOM "DCM", LOINC "LN"; NCIt for the one DICOM depth code that uses it) as
``{"scheme", "value", "meaning"}`` dicts with meanings of at most 64 characters.

MammoRG's 70 tokenizer terms (4 density, 9 BI-RADS, breast cancer, 10 findings, 18 anatomy,
28 descriptors) are flagged ``mammorg``; ``mammorg_terms()`` lists their surface strings. The
relation schema (which category may head and tail each relation) is ``RELATION_SCHEMA``.
Pure Python, no third-party imports. Data: ``_terms.py``. Documentation: docs/report-parser.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from models.report.lexicon._terms import ROWS, SECTIONS, VINDR

LEXICON_VERSION = "1.0.0"

CATEGORIES: tuple[str, ...] = ("density", "birads", "finding", "location", "descriptor", "diagnosis")
RELATIONS: tuple[str, ...] = ("located_at", "suggestive_of", "modified_by")
# relation -> (allowed head categories, allowed tail categories)
RELATION_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "located_at": (("finding",), ("location",)),
    "suggestive_of": (("finding",), ("birads", "diagnosis")),
    "modified_by": (("finding",), ("descriptor",)),
}
VINDR_FINDINGS: tuple[str, ...] = tuple(VINDR)
SECTION_CODES: dict[str, tuple[dict[str, str], ...]] = {
    name: tuple({"scheme": s, "value": v, "meaning": m} for s, v, m in codes) for name, codes in SECTIONS.items()
}


@dataclass(frozen=True)
class Term:
    """One lexicon entry."""

    id: str
    category: str  # one of CATEGORIES
    en: tuple[str, ...]  # English surface forms, lower case, preferred first
    zh: tuple[str, ...]  # Chinese surface forms, preferred (MammoRG token) first
    codes: tuple[dict[str, str], ...] = ()  # {"scheme", "value", "meaning"}
    group: str = ""  # finer grouping: shape, margin, quadrant, clock, depth, calc_morphology ...
    mammorg: bool = False  # one of MammoRG's 70 atomic tokenizer terms
    applies_to: tuple[str, ...] = ()  # descriptors: the finding ids they can modify
    value: str | None = None  # density letter, BI-RADS category or clock hour

    @property
    def name(self) -> str:
        """Preferred English wording (BI-RADS terms always spelled "BI-RADS")."""
        if self.category == "birads":
            return f"BI-RADS {self.value}"
        return self.en[0] if self.en else self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "en": list(self.en), "zh": list(self.zh),
                "codes": [dict(c) for c in self.codes], "group": self.group, "mammorg": self.mammorg,
                "applies_to": list(self.applies_to), "value": self.value}


def _build() -> tuple[Term, ...]:
    out = []
    for term_id, category, group, mammorg, en, zh, codes, applies_to, value in ROWS:
        out.append(Term(id=term_id, category=category, en=tuple(en), zh=tuple(zh),
                        codes=tuple({"scheme": s, "value": v, "meaning": m} for s, v, m in codes),
                        group=group, mammorg=bool(mammorg), applies_to=tuple(applies_to), value=value))
    return tuple(out)


_TERMS: tuple[Term, ...] = _build()
_BY_ID: dict[str, Term] = {t.id: t for t in _TERMS}
_VINDR_LOWER: dict[str, tuple[str | None, str | None]] = {k.lower(): v for k, v in VINDR.items()}


def terms() -> list[Term]:
    """All terms, in lexicon order."""
    return list(_TERMS)


def get(term_id: str) -> Term:
    """The term with this id; KeyError if there is none."""
    try:
        return _BY_ID[term_id]
    except KeyError:
        raise KeyError(f"no lexicon term {term_id!r}") from None


def by_category(category: str) -> list[Term]:
    """Terms of one category, in lexicon order; ValueError for an unknown category."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, not {category!r}")
    return [t for t in _TERMS if t.category == category]


def code_for(term_id: str) -> dict[str, str] | None:
    """The term's first (preferred) code as a new dict, or None when it has none."""
    term = get(term_id)
    return dict(term.codes[0]) if term.codes else None


def birads_term(category: str) -> str:
    """Lexicon id for a BI-RADS category ("4A" -> "birads_4a")."""
    term_id = "birads_" + str(category).strip().lower()
    get(term_id)
    return term_id


def density_term(letter: str) -> str:
    """Lexicon id for an ACR density letter ("C" -> "density_c")."""
    term_id = "density_" + str(letter).strip().lower()
    get(term_id)
    return term_id


@lru_cache(maxsize=4)
def _mammorg_terms(language: str | None) -> tuple[str, ...]:
    chosen = [t for t in _TERMS if t.mammorg]
    out: list[str] = []
    if language in (None, "zh"):
        for t in chosen:
            out.append(t.name if t.category == "birads" else t.zh[0])
        # MammoRG also adds side-qualified quadrants as single tokens ("左乳外上象限").
        for side in ("左乳", "右乳"):
            for q in ("uoq", "uiq", "loq", "liq"):
                out.append(side + _BY_ID[q].zh[0])
    if language in (None, "en"):
        for t in chosen:
            out.append(t.name)
    seen: set[str] = set()
    return tuple(s for s in out if not (s in seen or seen.add(s)))


def mammorg_terms(language: str | None = None) -> list[str]:
    """Surface strings to add to MammoRG's tokenizer as atomic tokens.

    ``"zh"``: the 70 Chinese terms (BI-RADS as "BI-RADS 4A") plus the eight side-qualified
    quadrants such as "左乳外上象限"; ``"en"``: the 70 English equivalents; ``None``: both, without
    duplicates (the BI-RADS strings are shared). Longest-match-first tokenisation is assumed.
    """
    if language not in (None, "zh", "en"):
        raise ValueError(f"language must be None, 'zh' or 'en', not {language!r}")
    return list(_mammorg_terms(language))


def vindr_to_mammorg(name: str) -> str | None:
    """MammoRG finding id for a VinDr-Mammo finding category (case-insensitive), or None when the
    category has no MammoRG finding ("Skin Retraction", "No Finding", unknown names)."""
    return _VINDR_LOWER.get(str(name).strip().lower(), (None, None))[0]


def vindr_descriptor(name: str) -> str | None:
    """Descriptor id a VinDr-Mammo category implies ("Focal Asymmetry" -> "asym_focal"), or None."""
    return _VINDR_LOWER.get(str(name).strip().lower(), (None, None))[1]


def mammorg_to_vindr(finding_id: str) -> list[str]:
    """VinDr-Mammo categories that map to a MammoRG finding id (may be empty)."""
    return [k for k, (f, _) in VINDR.items() if f == finding_id]


def relation_allowed(head: str, relation: str, tail: str) -> bool:
    """True when (head, relation, tail) fits RELATION_SCHEMA; unknown ids or relations are not allowed."""
    if relation not in RELATION_SCHEMA or head not in _BY_ID or tail not in _BY_ID:
        return False
    heads, tails = RELATION_SCHEMA[relation]
    if _BY_ID[head].category not in heads or _BY_ID[tail].category not in tails:
        return False
    applies = _BY_ID[tail].applies_to
    return not applies or head in applies


__all__ = [
    "CATEGORIES", "LEXICON_VERSION", "RELATIONS", "RELATION_SCHEMA", "SECTION_CODES", "Term", "VINDR_FINDINGS",
    "birads_term", "by_category", "code_for", "density_term", "get", "mammorg_terms", "mammorg_to_vindr",
    "relation_allowed", "terms", "vindr_descriptor", "vindr_to_mammorg",
]

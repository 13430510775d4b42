"""MammoRG's knowledge-graph edges: clinical knowledge plus what the training reports say.

The official graph (``KG.json``) was built from its training reports, so its edges say which
findings go with which sites, descriptors and categories. Linking every pair the relation schema
allows (what this repository did before) gives a graph that carries no knowledge: every finding
node sees the same neighbours. The edges here come from two sources:

1. ``ATLAS_RELATIONS``: a curated table from the ACR BI-RADS Atlas, 5th edition (2013), and the
   studies behind its positive predictive values, each row with its source. BI-RADS categories
   follow the atlas's likelihood-of-malignancy ranges (2 benign, 3 <= 2 %, 4A > 2-10 %,
   4B > 10-50 %, 4C > 50-< 95 %, 5 >= 95 %).
2. ``report_edges``: co-occurrence statistics over the training reports parsed with our parser
   (``models.report.parse``): the parser's relation triples per report, and per breast a POS
   finding or one of its descriptors with the breast's BI-RADS category. An edge is kept when it
   was seen at least ``min_count`` times and in at least ``min_fraction`` of its head's occurrences.

Deviation from the lexicon schema, on purpose: ``suggestive_of`` may also start at a descriptor
(spiculated margin -> BI-RADS 5), because the atlas assigns suspicion to descriptors, not to
"mass" or "calcification" as such. Torch-free; ``models.mammorg.knowledge.adjacency`` turns the
edges into the RGCN's adjacency.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal, NamedTuple

from models.report import lexicon
from models.report.result import BIRADS_CATEGORIES, ReportResult

EdgeMode = Literal["knowledge", "atlas", "reports", "complete", "none"]
EDGE_MODES: tuple[str, ...] = ("knowledge", "atlas", "reports", "complete", "none")

ATLAS = "ACR BI-RADS Atlas 5th ed. (2013), mammography"
BENT_2010 = "Bent CK et al., AJR 2010;194:1378-1383 (PPV of calcification descriptors)"
LIBERMAN_1998 = "Liberman L et al., AJR 1998;171:35-40 (PPV of mass features)"
SICKLES_1991 = "Sickles EA, Radiology 1991;179:463-468 (probably benign lesions)"


class Edge(NamedTuple):
    """One directed, typed edge between two graph nodes, and where it comes from."""

    head: str
    relation: str
    tail: str
    source: str


def graph_nodes() -> list[str]:
    """The graph's nodes: MammoRG's 70 lexicon terms, in lexicon order."""
    return [t.id for t in lexicon.terms() if t.mammorg]


_NODES = frozenset(graph_nodes())


def edge_allowed(head: str, relation: str, tail: str) -> bool:
    """The lexicon's relation schema over graph nodes, plus descriptor -> category for suggestive_of."""
    if head not in _NODES or tail not in _NODES:
        return False
    if lexicon.relation_allowed(head, relation, tail):
        return True
    return (relation == "suggestive_of" and lexicon.get(head).category == "descriptor"
            and lexicon.get(tail).category in ("birads", "diagnosis"))


_LESIONS = ("mass", "nodule", "calcification", "architectural_distortion", "asymmetry")
_BREAST_SITES = ("uoq", "uiq", "loq", "liq", "upper", "lower", "outer", "inner", "central", "subareolar",
                 "axillary_tail", "anterior", "middle", "posterior")
_QUADRANTS = ("uoq", "uiq", "loq", "liq", "upper", "lower", "outer", "inner")

# (heads, relation, tails, source): every head linked to every tail.
ATLAS_RELATIONS: tuple[tuple[tuple[str, ...], str, tuple[str, ...], str], ...] = (
    # --- where findings occur (atlas: location by quadrant or region, clock face and depth third)
    (_LESIONS, "located_at", _BREAST_SITES, f"{ATLAS}: lesion location (quadrant/region, depth third)"),
    (("calcification",), "located_at", ("skin",), f"{ATLAS}: skin (dermal) calcifications"),
    (("hyperplasia",), "located_at", _QUADRANTS, "glandular tissue: quadrants and regions"),
    (("skin_thickening",), "located_at", ("skin",), f"{ATLAS}: associated features, skin thickening"),
    (("nipple_retraction",), "located_at", ("nipple", "subareolar"), f"{ATLAS}: associated features, nipple retraction"),
    (("enlarged_lymph_node",), "located_at", ("axilla", "axillary_tail"), f"{ATLAS}: associated features, axillary adenopathy"),
    (("thickened_cooper_ligament",), "located_at", ("anterior",), "anatomy: Cooper's ligaments lie in the anterior (premammary) layer"),
    # --- descriptor lexicon per finding (which descriptors the atlas defines for which finding)
    (("mass", "nodule"), "modified_by",
     ("shape_oval", "shape_round", "shape_irregular", "shape_lobulated", "margin_circumscribed", "margin_obscured",
      "margin_microlobulated", "margin_indistinct", "margin_spiculated", "mass_density_high", "mass_density_equal",
      "mass_density_low", "mass_density_fat"), f"{ATLAS}: mass shape, margin, density"),
    (("calcification",), "modified_by",
     ("calc_coarse", "calc_vascular", "calc_rim", "calc_punctate", "calc_amorphous", "calc_coarse_heterogeneous",
      "calc_fine_pleomorphic", "calc_fine_linear_branching", "calc_micro", "dist_diffuse", "dist_regional",
      "dist_grouped", "dist_linear", "dist_segmental"), f"{ATLAS}: calcification morphology and distribution"),
    (("architectural_distortion",), "modified_by", ("margin_spiculated",), f"{ATLAS}: distortion, spiculations without a mass"),
    (_LESIONS, "modified_by", ("skin_retraction",), f"{ATLAS}: associated features, skin retraction"),
    # --- suspicion: descriptor or finding -> assessment category
    (("calc_coarse", "calc_vascular", "calc_rim"), "suggestive_of", ("birads_2",),
     f"{ATLAS}: typically benign calcifications (coarse/popcorn, vascular, rim)"),
    (("calc_punctate", "dist_diffuse"), "suggestive_of", ("birads_2",),
     f"{ATLAS}: punctate or diffuse calcifications are usually benign"),
    (("calc_punctate",), "suggestive_of", ("birads_3",), f"{SICKLES_1991}: a group of punctate calcifications"),
    (("calc_amorphous", "calc_coarse_heterogeneous"), "suggestive_of", ("birads_4b",),
     f"{ATLAS}; {BENT_2010}: suspicious morphology, PPV about 13-21 %"),
    (("calc_fine_pleomorphic",), "suggestive_of", ("birads_4b", "birads_4c", "breast_cancer"),
     f"{ATLAS}; {BENT_2010}: fine pleomorphic, PPV about 29 %"),
    (("calc_fine_linear_branching",), "suggestive_of", ("birads_4c", "birads_5", "breast_cancer"),
     f"{ATLAS}; {BENT_2010}: fine linear or fine-linear branching, PPV about 70 %"),
    (("dist_linear", "dist_segmental"), "suggestive_of", ("birads_4b", "birads_4c"),
     f"{ATLAS}: linear and segmental distributions raise suspicion"),
    (("margin_spiculated",), "suggestive_of", ("birads_5", "breast_cancer"), f"{ATLAS}; {LIBERMAN_1998}: spiculated margin, PPV 81 %"),
    (("shape_irregular",), "suggestive_of", ("birads_4c", "birads_5", "breast_cancer"),
     f"{ATLAS}; {LIBERMAN_1998}: irregular shape, PPV 73 %"),
    (("margin_indistinct", "margin_microlobulated"), "suggestive_of", ("birads_4b",),
     f"{ATLAS}: indistinct or microlobulated margins are suspicious"),
    (("margin_obscured",), "suggestive_of", ("birads_0",), f"{ATLAS}: an obscured margin needs additional imaging"),
    (("margin_circumscribed", "shape_oval", "shape_round"), "suggestive_of", ("birads_3",),
     f"{SICKLES_1991}: a circumscribed oval or round solid mass is probably benign"),
    (("mass_density_fat",), "suggestive_of", ("birads_2",),
     f"{ATLAS}: fat-containing masses (lipoma, oil cyst, hamartoma) are benign"),
    (("architectural_distortion",), "suggestive_of", ("birads_4b", "birads_4c", "breast_cancer"),
     f"{ATLAS}: distortion without prior surgery or trauma is suspicious"),
    (("asymmetry",), "suggestive_of", ("birads_0",), f"{ATLAS}: a screening asymmetry is recalled for additional imaging"),
    (("skin_retraction", "nipple_retraction"), "suggestive_of", ("breast_cancer",),
     f"{ATLAS}: associated features of malignancy (skin and nipple retraction)"),
)


def atlas_edges() -> list[Edge]:
    """The curated table, expanded to single edges (first source wins for a repeated edge)."""
    out: dict[tuple[str, str, str], Edge] = {}
    for heads, relation, tails, source in ATLAS_RELATIONS:
        for head in heads:
            for tail in tails:
                if not edge_allowed(head, relation, tail):
                    raise ValueError(f"atlas relation ({head}, {relation}, {tail}) is not a graph edge")
                out.setdefault((head, relation, tail), Edge(head, relation, tail, source))
    return list(out.values())


def complete_edges() -> list[Edge]:
    """Every pair the lexicon's schema allows (the old graph; kept as an ablation)."""
    nodes = graph_nodes()
    return [Edge(h, r, t, "schema") for h in nodes for t in nodes for r in lexicon.RELATIONS
            if lexicon.relation_allowed(h, r, t)]


def report_edges(results: Iterable[ReportResult], min_count: int = 3, min_fraction: float = 0.05) -> list[Edge]:
    """Co-occurrence edges from parsed training reports, above both thresholds.

    Two units, each edge's fraction taken in its own: per report, the parser's relation triples
    over the head finding's reports; per breast, a POS finding or one of its descriptors with the
    breast's BI-RADS category (suggestive_of) over the breasts where that head occurs.
    """
    if min_count < 1 or not 0.0 <= min_fraction <= 1.0:
        raise ValueError("min_count must be >= 1 and min_fraction in [0, 1]")
    counts: dict[str, Counter] = {"report": Counter(), "breast": Counter()}
    heads: dict[str, Counter] = {"report": Counter(), "breast": Counter()}
    reports = 0
    for result in results:
        reports += 1
        positive = {k for b in result.breasts.values() for k, f in b.findings.items() if f.status == "POS"}
        heads["report"].update(positive)
        counts["report"].update({t for t in result.relations if edge_allowed(*t)})
        for breast in result.breasts.values():
            if breast.birads not in BIRADS_CATEGORIES:
                continue
            category = lexicon.birads_term(breast.birads)
            found = [k for k, f in breast.findings.items() if f.status == "POS"]
            descriptors = {d for k in found for d in breast.findings[k].descriptors}
            present = set(found) | descriptors
            heads["breast"].update(present)
            counts["breast"].update({(h, "suggestive_of", category) for h in present
                                     if edge_allowed(h, "suggestive_of", category)})
    out: dict[tuple[str, str, str], Edge] = {}
    for unit in ("report", "breast"):
        for triple, n in sorted(counts[unit].items()):
            of = heads[unit][triple[0]]
            if n >= min_count and of and n / of >= min_fraction and triple not in out:
                out[triple] = Edge(*triple, f"reports: {n} of {of} {unit}s with {triple[0]} ({n / of:.2f})")
    return list(out.values())


def graph_edges(mode: str, results: Iterable[ReportResult] = (), min_count: int = 3,
                min_fraction: float = 0.05) -> list[Edge]:
    """The edge set for ``mode``: ``knowledge`` (atlas table plus report statistics, the default),
    ``atlas``, ``reports``, ``complete`` (every schema pair) or ``none`` (no edges)."""
    if mode not in EDGE_MODES:
        raise ValueError(f"graph edge mode must be one of {EDGE_MODES}, not {mode!r}")
    if mode == "none":
        return []
    if mode == "complete":
        return complete_edges()
    out: dict[tuple[str, str, str], Edge] = {}
    if mode in ("knowledge", "atlas"):
        out.update({e[:3]: e for e in atlas_edges()})
    if mode in ("knowledge", "reports"):
        for e in report_edges(results, min_count, min_fraction):
            out.setdefault(e[:3], e)
    return list(out.values())

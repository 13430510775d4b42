"""MammoRG's knowledge-graph edges: the curated atlas table and the report co-occurrence statistics."""
from __future__ import annotations

import pytest

from models.report import lexicon
from models.mammorg.edges import (
    ATLAS_RELATIONS, EDGE_MODES, atlas_edges, complete_edges, edge_allowed, graph_edges, graph_nodes, report_edges,
)
from models.report.result import ReportResult
from models.report.parse import parse_report

SPICULATED = (
    "FINDINGS:\nThe breasts are heterogeneously dense. In the left breast, upper outer quadrant, there is an "
    "irregular mass with spiculated margins.\n\nIMPRESSION:\nRight breast: BI-RADS 1 - negative.\n"
    "Left breast: BI-RADS 5 - highly suggestive of malignancy."
)
BENIGN = (
    "FINDINGS:\nThe breasts are extremely dense. Coarse calcifications in the right breast, lower inner quadrant.\n\n"
    "IMPRESSION:\nRight breast: BI-RADS 2 - benign.\nLeft breast: BI-RADS 1 - negative."
)


def _keys(edges) -> set[tuple[str, str, str]]:
    return {e[:3] for e in edges}


def test_atlas_table_is_sourced_schema_valid_and_holds_the_textbook_relations():
    edges = atlas_edges()
    assert all(edge_allowed(h, r, t) and source for h, r, t, source in edges)
    assert all(source for *_, source in ATLAS_RELATIONS)
    keys = _keys(edges)
    for triple in [("margin_spiculated", "suggestive_of", "breast_cancer"),
                   ("calc_fine_pleomorphic", "suggestive_of", "breast_cancer"),
                   ("calc_fine_linear_branching", "suggestive_of", "breast_cancer"),
                   ("calc_coarse", "suggestive_of", "birads_2"), ("calc_rim", "suggestive_of", "birads_2"),
                   ("calc_vascular", "suggestive_of", "birads_2"), ("mass_density_fat", "suggestive_of", "birads_2"),
                   ("enlarged_lymph_node", "located_at", "axilla"), ("mass", "modified_by", "margin_spiculated")]:
        assert triple in keys, triple
    # Knowledge, not the schema: these pairs are allowed but clinically wrong, so not linked.
    for triple in [("skin_thickening", "located_at", "uoq"), ("enlarged_lymph_node", "located_at", "nipple"),
                   ("calc_coarse", "suggestive_of", "birads_5"), ("margin_spiculated", "suggestive_of", "birads_2")]:
        assert triple not in keys, triple
    assert len(keys & _keys(complete_edges())) < len(_keys(complete_edges()))


def test_descriptor_heads_only_for_suggestive_of():
    assert edge_allowed("margin_spiculated", "suggestive_of", "birads_5")
    assert not lexicon.relation_allowed("margin_spiculated", "suggestive_of", "birads_5")  # parser schema unchanged
    assert not edge_allowed("margin_spiculated", "located_at", "uoq")
    assert not edge_allowed("mass", "located_at", "clock_2")  # not one of the 70 graph nodes
    assert len(graph_nodes()) == 70


def test_report_edges_keep_what_is_frequent_enough_in_both_senses():
    spiculated, benign = parse_report(SPICULATED), parse_report(BENIGN)
    keys = _keys(report_edges([spiculated] * 3, min_count=3))
    # Per report: the parser's triples; per breast: finding and descriptors with the breast's category.
    assert {("mass", "located_at", "uoq"), ("mass", "modified_by", "margin_spiculated"),
            ("mass", "suggestive_of", "birads_5"), ("margin_spiculated", "suggestive_of", "birads_5"),
            ("shape_irregular", "suggestive_of", "birads_5")} <= keys
    assert not report_edges([spiculated] * 2, min_count=3)          # below the count
    # Seen 3 times, but in 3 of 63 reports with a calcification (0.048): below a 5 % fraction.
    mixed = [benign] * 60 + [parse_report(BENIGN.replace("Coarse", "Rim"))] * 3
    assert ("calcification", "located_at", "liq") in _keys(report_edges(mixed))
    assert ("calc_rim", "suggestive_of", "birads_2") in _keys(report_edges(mixed))  # 3 of its 3 breasts
    rim_in_report = ("calcification", "modified_by", "calc_rim")
    assert rim_in_report not in _keys(report_edges(mixed, min_fraction=0.05))
    assert rim_in_report in _keys(report_edges(mixed, min_fraction=0.04))
    source = {e[:3]: e.source for e in report_edges(mixed)}[("calcification", "located_at", "liq")]
    assert source.startswith("reports: 63 of 63 reports")
    with pytest.raises(ValueError):
        report_edges([], min_count=0)


def test_edge_modes():
    results = [parse_report(SPICULATED)] * 3 + [ReportResult()]
    atlas, reports = _keys(graph_edges("atlas")), _keys(graph_edges("reports", results))
    knowledge = _keys(graph_edges("knowledge", results))
    assert knowledge == atlas | reports and reports - atlas  # the data add edges the table lacks
    assert _keys(graph_edges("complete")) == _keys(complete_edges()) and graph_edges("none") == []
    assert set(EDGE_MODES) == {"knowledge", "atlas", "reports", "complete", "none"}
    with pytest.raises(ValueError, match="graph edge mode"):
        graph_edges("everything")

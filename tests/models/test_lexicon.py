"""models.report.lexicon: ids, categories, MammoRG's 70 terms, codes (checked against pydicom's code
dictionary, so no code is invented), the VinDr-Mammo mapping and the relation schema."""
from __future__ import annotations

import re
from collections import Counter

import pytest
from pydicom.sr._concepts_dict import concepts

from models.report import lexicon
from models.package.labels import FINDING_CLASSES
from models.report.result import BIRADS_CATEGORIES, DENSITIES, MAMMORG_FINDINGS

TERMS = lexicon.terms()


def test_ids_are_unique_snake_case_and_categorised() -> None:
    ids = [t.id for t in TERMS]
    assert len(ids) == len(set(ids))
    for t in TERMS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", t.id), t.id
        assert t.category in lexicon.CATEGORIES, t.id
        assert lexicon.get(t.id) is t
        assert t.en and t.zh, f"{t.id} needs English and Chinese forms"
        assert all(f == f.lower() for f in t.en if t.category != "birads"), t.id
    assert set(lexicon.CATEGORIES) == {t.category for t in TERMS}


def test_lookup_errors() -> None:
    with pytest.raises(KeyError):
        lexicon.get("no_such_term")
    with pytest.raises(ValueError):
        lexicon.by_category("anatomy")
    with pytest.raises(ValueError):
        lexicon.mammorg_terms("fr")


def test_every_mammorg_finding_is_a_finding_term() -> None:
    findings = [t.id for t in lexicon.by_category("finding")]
    assert findings == list(MAMMORG_FINDINGS)
    zh = {t.id: t.zh[0] for t in lexicon.by_category("finding")}
    assert zh == {"calcification": "钙化", "mass": "肿块", "hyperplasia": "乳腺增生", "skin_thickening": "皮肤增厚",
                  "enlarged_lymph_node": "淋巴结肿大", "nipple_retraction": "乳头凹陷",
                  "architectural_distortion": "结构扭曲", "thickened_cooper_ligament": "悬韧带增粗", "nodule": "结节",
                  "asymmetry": "结构不对称"}


def test_density_and_birads_values() -> None:
    assert [t.value for t in lexicon.by_category("density")] == list(DENSITIES)
    assert [t.zh[0] for t in lexicon.by_category("density")] == ["脂肪型", "纤维腺体型", "不均匀致密型", "致密型"]
    values = [t.value for t in lexicon.by_category("birads")]
    assert set(BIRADS_CATEGORIES) <= set(values) and set(values) - set(BIRADS_CATEGORIES) == {"4"}
    for cat in BIRADS_CATEGORIES:
        term = lexicon.get(lexicon.birads_term(cat))
        assert term.name == f"BI-RADS {cat}"  # one spelling everywhere in output
    assert lexicon.density_term("c") == "density_c"
    with pytest.raises(KeyError):
        lexicon.birads_term("7")


def test_mammorg_seventy_terms() -> None:
    chosen = [t for t in TERMS if t.mammorg]
    assert len(chosen) == 70
    assert Counter(t.category for t in chosen) == {"density": 4, "birads": 9, "diagnosis": 1, "finding": 10,
                                                   "location": 18, "descriptor": 28}
    assert [t.id for t in chosen if t.category == "diagnosis"] == ["breast_cancer"]
    zh = lexicon.mammorg_terms("zh")
    en = lexicon.mammorg_terms("en")
    both = lexicon.mammorg_terms()
    assert len(en) == 70 and len(zh) == 78  # 70 + eight side-qualified quadrants
    assert {"BI-RADS 4A", "左乳外上象限", "右乳内下象限", "不均匀致密型", "乳腺癌", "毛刺"} <= set(zh)
    assert {"BI-RADS 4A", "heterogeneously dense", "upper outer quadrant", "spiculated"} <= set(en)
    assert len(both) == len(set(both)) == len(set(zh) | set(en))
    assert not any("Bi-Rads" in s or "BIRADS" in s for s in both)
    assert lexicon.mammorg_terms() is not lexicon.mammorg_terms()  # callers get their own list


def _pydicom_meaning(scheme: str, value: str) -> str | None:
    for codes in concepts.get(scheme, {}).values():
        if value in codes:
            return codes[value][0]
    return None


def test_codes_are_well_formed_and_exist_in_pydicom() -> None:
    coded = 0
    for t in TERMS:
        for code in t.codes:
            assert set(code) == {"scheme", "value", "meaning"}, t.id
            assert code["scheme"] in ("SCT", "DCM", "LN", "NCIt"), t.id
            assert 0 < len(code["meaning"]) <= 64, t.id
            assert _pydicom_meaning(code["scheme"], code["value"]) is not None, f"{t.id}: {code} not in pydicom"
            coded += 1
    assert coded >= 70
    for codes in lexicon.SECTION_CODES.values():
        for code in codes:
            assert _pydicom_meaning(code["scheme"], code["value"]) is not None


def test_birads_codes() -> None:
    expected = {"0": "397138000", "1": "397140005", "2": "397141009", "3": "397143007", "4": "397144001",
                "5": "397145000"}
    for cat, value in expected.items():
        code = lexicon.code_for(lexicon.birads_term(cat))
        assert code["scheme"] == "SCT" and code["value"] == value
        assert code["meaning"].startswith(f"BI-RADS {cat}: ")
    for cat in ("4A", "4B", "4C", "6"):  # no verifiable code: left empty rather than invented
        assert lexicon.code_for(lexicon.birads_term(cat)) is None
    assert lexicon.code_for("density_c") == {"scheme": "SCT", "value": "129718006", "meaning": "Heterogeneously dense"}


def test_code_for_returns_a_copy() -> None:
    code = lexicon.code_for("mass")
    code["value"] = "x"
    assert lexicon.code_for("mass")["value"] == "129788004"


def test_descriptors_apply_to_findings_and_shared_forms_are_resolvable() -> None:
    findings = set(MAMMORG_FINDINGS)
    owners: dict[tuple[str, str], list] = {}
    for t in TERMS:
        if t.category == "descriptor":
            assert t.applies_to and set(t.applies_to) <= findings, t.id
        else:
            assert not t.applies_to, t.id
        for form in t.en + t.zh:
            ts = owners.setdefault((t.category, form.lower()), [])
            if t not in ts:
                ts.append(t)
    for (category, form), ts in owners.items():
        if len(ts) > 1:
            # only descriptors may share a form, and then for different findings ("round": mass / calcification)
            assert category == "descriptor", (form, [t.id for t in ts])
            seen: set = set()
            for t in ts:
                assert not seen & set(t.applies_to), (form, [t.id for t in ts])
                seen |= set(t.applies_to)


def test_locations_cover_quadrants_clock_and_depth() -> None:
    groups = Counter(t.group for t in lexicon.by_category("location"))
    assert groups["quadrant"] == 4 and groups["clock"] == 12 and groups["depth"] == 3
    assert {"central", "subareolar", "axillary_tail", "axilla", "upper", "lower", "outer", "inner"} <= {
        t.id for t in lexicon.by_category("location")}
    assert "乳晕后方" in lexicon.get("subareolar").zh and "腋窝" in lexicon.get("axilla").zh
    assert lexicon.code_for("clock_10")["value"] == "129781005"


def test_vindr_mapping() -> None:
    assert set(lexicon.VINDR_FINDINGS) == set(FINDING_CLASSES)
    expected = {"Mass": "mass", "Global Asymmetry": "asymmetry", "Architectural Distortion": "architectural_distortion",
                "Nipple Retraction": "nipple_retraction", "Suspicious Calcification": "calcification",
                "Focal Asymmetry": "asymmetry", "Asymmetry": "asymmetry",
                "Suspicious Lymph Node": "enlarged_lymph_node",
                "Skin Thickening": "skin_thickening", "Skin Retraction": None}
    for name, finding in expected.items():
        assert lexicon.vindr_to_mammorg(name) == finding
        assert lexicon.vindr_to_mammorg(name.upper()) == finding
    assert lexicon.vindr_to_mammorg("No Finding") is None
    assert lexicon.vindr_descriptor("Focal Asymmetry") == "asym_focal"
    assert lexicon.vindr_descriptor("skin retraction") == "skin_retraction"
    assert sorted(lexicon.mammorg_to_vindr("asymmetry")) == ["Asymmetry", "Focal Asymmetry", "Global Asymmetry"]
    assert lexicon.mammorg_to_vindr("hyperplasia") == []


def test_relation_schema() -> None:
    assert set(lexicon.RELATION_SCHEMA) == set(lexicon.RELATIONS)
    assert lexicon.relation_allowed("mass", "located_at", "uoq")
    assert lexicon.relation_allowed("mass", "modified_by", "margin_spiculated")
    assert lexicon.relation_allowed("calcification", "suggestive_of", "birads_4b")
    assert lexicon.relation_allowed("mass", "suggestive_of", "breast_cancer")
    assert not lexicon.relation_allowed("mass", "located_at", "birads_2")  # wrong tail category
    assert not lexicon.relation_allowed("uoq", "located_at", "mass")  # wrong head category
    assert not lexicon.relation_allowed("calcification", "modified_by", "margin_spiculated")  # not applicable
    assert not lexicon.relation_allowed("mass", "next_to", "uoq")
    assert not lexicon.relation_allowed("mass", "located_at", "nowhere")


def test_terms_serialise() -> None:
    data = lexicon.get("calc_fine_pleomorphic").to_dict()
    assert data["codes"][0]["scheme"] == "DCM" and data["applies_to"] == ["calcification"]
    assert isinstance(lexicon.LEXICON_VERSION, str) and lexicon.LEXICON_VERSION

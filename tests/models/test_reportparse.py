"""models.report.parse: sections, notations, sides, scopes, relations, phantom reports and speed.

The hand-written report corpus is checked in test_reportparse_cases.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from models.report import lexicon
from models.report.result import BIRADS_CATEGORIES, MAMMORG_FINDINGS, STATUSES, ReportResult
from models.report.parse import BIRADS_SEVERITY, detect_language, normalize, parse_report, split_sections

REPORTS = Path(__file__).parent / "reports"


def status(text: str, side: str, kind: str) -> str:
    return parse_report(text).breasts[side].findings[kind].status


def statuses(text: str, kind: str) -> tuple[str, str]:
    r = parse_report(text)
    return r.breasts["R"].findings[kind].status, r.breasts["L"].findings[kind].status


def birads(text: str) -> tuple[str | None, str | None]:
    r = parse_report(text)
    return r.breasts["R"].birads, r.breasts["L"].birads


def density(text: str) -> tuple[str | None, str | None]:
    r = parse_report(text)
    return r.breasts["R"].density, r.breasts["L"].density


# ---------------------------------------------------------------------------------------------- API


def test_result_shape_and_types() -> None:
    text = ("FINDINGS: Heterogeneously dense. A spiculated mass in the right breast at 10 o'clock. "
            "IMPRESSION: Right breast mass, BI-RADS 5. Left breast: BI-RADS 1.")
    r = parse_report(text)
    assert isinstance(r, ReportResult)
    assert set(r.breasts) == {"R", "L"}
    for b in r.breasts.values():
        assert list(b.findings) == list(MAMMORG_FINDINGS)
        assert all(f.status in STATUSES and f.kind == k for k, f in b.findings.items())
        assert b.birads in BIRADS_CATEGORIES and b.density == "C"
    assert r.findings_text.startswith("Heterogeneously dense") and r.impression_text.startswith("Right breast mass")
    assert r.language == "en"
    for triple in r.relations:
        assert isinstance(triple, tuple) and lexicon.relation_allowed(*triple)
    json.dumps(r.to_dict())  # serialisable
    assert ("mass", "suggestive_of", "birads_5") in r.relations


def test_language() -> None:
    assert detect_language("BI-RADS 3") == "en"
    assert detect_language("右乳 BI-RADS 3") == "zh"
    assert parse_report("右乳BI-RADS 3").language == "zh"
    assert parse_report("BI-RADS 3", language="zh").language == "zh"


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "FINDINGS:\nIMPRESSION:", "。。；;", "(1)", "BI-RADS"])
def test_degenerate_input(text: str) -> None:
    r = parse_report(text)
    assert all(b.birads is None and b.density is None for b in r.breasts.values())
    assert all(f.status == "BLANK" for b in r.breasts.values() for f in b.findings.values())
    assert r.relations == []


def test_none_text_is_empty() -> None:
    assert parse_report(None).breasts["R"].birads is None  # type: ignore[arg-type]


def test_normalize() -> None:
    assert normalize("ＢＩ－ＲＡＤＳ　４Ａ") == "BI-RADS 4A"
    assert normalize("①右乳②左乳") == "\n(1) 右乳\n(2) 左乳"
    assert normalize("Cooper’s ligaments – thickened") == "Cooper's ligaments - thickened"
    assert normalize("BI-RADS Ⅳ") == "BI-RADS IV"


# ---------------------------------------------------------------------------------------------- sections


@pytest.mark.parametrize("text, findings, impression", [
    ("FINDINGS: a\nIMPRESSION: b", "a", "b"),
    ("Findings:双乳腺体呈脂肪型。; Impression:1.双乳BI-RADS 1。", "双乳腺体呈脂肪型。", "1.双乳BI-RADS 1。"),
    ("findings: a. impression: b.", "a.", "b."),
    ("检查所见：双乳未见异常。\n诊断意见：BI-RADS 1类。", "双乳未见异常。", "BI-RADS 1类。"),
    ("所见：a\n诊断：b", "a", "b"),
    ("影像所见：a\n印象：b", "a", "b"),
    ("【检查所见】\na\n【诊断意见】\nb", "a", "b"),
    ("【影像所见】a。【影像诊断】b。", "a。", "b。"),
    ("HISTORY: prior cancer.\nFINDINGS: a\nIMPRESSION: b\nRECOMMENDATION: c", "a", "b\nc"),
    ("Bilateral mammogram. Scattered density.\nIMPRESSION: BI-RADS 2.", "Bilateral mammogram. Scattered density.",
     "BI-RADS 2."),
    ("FINDINGS\nThe breasts are fatty.\nIMPRESSION\nBI-RADS 1", "The breasts are fatty.", "BI-RADS 1"),
    ("FINDINGS: a\nASSESSMENT: BI-RADS 1\nTECHNIQUE: CC and MLO", "a", "BI-RADS 1"),
    ("临床诊断：乳腺增生。\n检查所见：a\n诊断意见：b", "a", "b"),
    ("The breasts are fatty. No mass. BI-RADS 1.", "The breasts are fatty. No mass. BI-RADS 1.", ""),
    ("No first impression of the mass was made.", "No first impression of the mass was made.", ""),
])
def test_split_sections(text: str, findings: str, impression: str) -> None:
    assert split_sections(text) == (findings, impression)


def test_history_is_not_parsed() -> None:
    r = parse_report("HISTORY: Right breast mass, BI-RADS 5 elsewhere.\nFINDINGS: Fatty breasts. No mass.\n"
                     "IMPRESSION: Benign.")
    assert (r.breasts["R"].birads, r.breasts["L"].birads) == (None, None)
    assert r.breasts["R"].findings["mass"].status == "NEG" == r.breasts["L"].findings["mass"].status


# ---------------------------------------------------------------------------------------------- BI-RADS


@pytest.mark.parametrize("notation, category", [
    ("BI-RADS 4A", "4A"), ("BI-RADS 4a", "4A"), ("Bi-Rads 4A", "4A"), ("BIRADS 4A", "4A"), ("BI RADS 4A", "4A"),
    ("birads-4a", "4A"), ("BI-RADS 4 A", "4A"), ("BI-RADS category 4B", "4B"), ("category 4c", "4C"),
    ("BI-RADS: 2", "2"), ("BI-RADS-2", "2"), ("ACR BI-RADS 3", "3"), ("BI-RADS® 5", "5"), ("BI-RADS 6", "6"),
    ("BI-RADS 0", "0"), ("BI-RADS II", "2"), ("bi-rads iii", "3"), ("BI-RADS IVb", "4B"), ("BI-RADS V", "5"),
    ("BI-RADS Ⅲ类", "3"), ("ＢＩ－ＲＡＤＳ　４Ｂ", "4B"), ("4A类", "4A"), ("BI-RADS 4C类", "4C"), ("BI-RADS分类：3类", "3"),
    ("BI-RADS 4", "4A"), ("BI-RADS 4类", "4A"), ("BI-RADS IV", "4A"), ("(BI-RADS 1)", "1"),
])
def test_birads_notations(notation: str, category: str) -> None:
    assert birads(f"IMPRESSION: {notation}.") == (category, category)


@pytest.mark.parametrize("text", ["Per the ACR BI-RADS 5th edition atlas, the breasts are fatty.",
                                  "BI-RADS lexicon terms are used.", "BI-RADS is used.", "Six months ago: 3 cysts."])
def test_not_birads(text: str) -> None:
    assert birads(text) == (None, None)


def test_birads_severity_order() -> None:
    assert BIRADS_SEVERITY == ("1", "2", "3", "0", "4A", "4B", "4C", "5", "6")
    assert set(BIRADS_SEVERITY) == set(BIRADS_CATEGORIES)


@pytest.mark.parametrize("impression, expected", [
    ("Right breast: BI-RADS 3. Right breast: BI-RADS 4B. Left breast: BI-RADS 1.", ("4B", "1")),  # highest wins
    ("1.右乳BI-RADS 3。2.右乳BI-RADS 0。3.左乳BI-RADS 2。", ("0", "2")),  # 0 outranks 3
    ("Right: BI-RADS 0. Right: BI-RADS 4A. Left: BI-RADS 1.", ("4A", "1")),  # suspicious outranks 0
    ("Right: BI-RADS 2. Right: BI-RADS 0. Left: BI-RADS 1.", ("0", "1")),  # 0 is not hidden by a 2
    ("1.双乳BI-RADS 2。2.右乳BI-RADS 1。", ("1", "2")),  # unilateral beats bilateral, even when lower
    ("Right breast: BI-RADS 3. Left breast: BI-RADS 1. Overall: BI-RADS 3.", ("3", "1")),
    ("BI-RADS 4A left, BI-RADS 1 right.", ("1", "4A")),  # side right after the category
    ("BI-RADS：右乳1类，左乳4C类。", ("1", "4C")),
    ("Suspicious right breast mass. BI-RADS 4B.", ("4B", None)),  # nearest preceding side
    ("BI-RADS 2 bilaterally.", ("2", "2")),
    ("Benign findings in both breasts. BI-RADS 2.", ("2", "2")),
    ("Right breast mass. Left breast calcifications. BI-RADS 4A.", ("4A", "4A")),  # several sides: exam level
    ("RIGHT BREAST:\nSuspicious mass.\nBI-RADS 4C.\nLEFT BREAST:\nBI-RADS 1.", ("4C", "1")),
    ("1. Right breast mass, BI-RADS 4B. 2. BI-RADS 2 for the left breast.", ("4B", "2")),
    ("右乳肿块，Bi-Rads 4a。左乳Bi-Rads 1。", ("4A", "1")),
    ("1.左侧腋下淋巴结肿大，BI-RADS 4A。2.双乳BI-RADS 1。", ("1", "4A")),
])
def test_birads_sides_and_ranking(impression: str, expected: tuple) -> None:
    assert birads("FINDINGS: Fatty breasts.\nIMPRESSION: " + impression) == expected


def test_birads_from_impression_first_else_whole_text() -> None:
    assert birads("FINDINGS: Prior BI-RADS 4A biopsy site, benign. IMPRESSION: BI-RADS 2.") == ("2", "2")
    assert birads("FINDINGS: Stable. BI-RADS 2. IMPRESSION: Benign, routine screening.") == ("2", "2")


# ---------------------------------------------------------------------------------------------- density


@pytest.mark.parametrize("phrase, letter", [
    ("The breasts are almost entirely fatty.", "A"), ("Fatty replaced breasts.", "A"), ("ACR a.", "A"),
    ("There are scattered areas of fibroglandular density.", "B"), ("Scattered fibroglandular densities.", "B"),
    ("Breast density: B.", "B"), ("ACR 2.", "B"), ("Composition type B.", "B"),
    ("The breasts are heterogeneously dense, which may obscure small masses.", "C"), ("Density C.", "C"),
    ("ACR category C.", "C"), ("The breasts are extremely dense.", "D"), ("ACR density D.", "D"),
    ("双乳腺体呈脂肪型。", "A"), ("双乳腺体呈散在纤维腺体型。", "B"), ("双乳腺体呈纤维腺体型。", "B"),
    ("双乳腺体呈不均匀致密型。", "C"), ("双乳呈多量腺体型。", "C"), ("双乳腺体呈致密型。", "D"), ("双乳腺体呈极度致密型。", "D"),
    ("乳腺类型：C型。", "C"), ("腺体分型：ACR b型。", "B"), ("ＡＣＲ　Ｄ型", "D"),
])
def test_density_notations(phrase: str, letter: str) -> None:
    assert density(phrase) == (letter, letter)


@pytest.mark.parametrize("text", ["建议B型超声检查。", "BI-RADS 4A类。", "A 5 mm high density mass.", "Dense breasts.",
                                  "双乳腺体致密。", "The lymph node has a fatty hilum.", "BI-RADS category 2."])
def test_not_density(text: str) -> None:
    assert density(text) == (None, None)


def test_density_sides() -> None:
    assert density("The right breast is heterogeneously dense; the left breast is almost entirely fatty.") == ("C", "A")
    assert density("右乳腺体呈不均匀致密型，左乳腺体呈散在纤维腺体型。") == ("C", "B")
    assert density("左乳腺体呈致密型。") == (None, "D")
    # a unilateral statement beats a bilateral one for its breast
    assert density("The breasts are heterogeneously dense. The left breast is extremely dense.") == ("C", "D")


# ---------------------------------------------------------------------------------------------- sides


def test_sides() -> None:
    assert statuses("There is a mass in the right breast.", "mass") == ("POS", "BLANK")
    assert statuses("左乳见一肿块。", "mass") == ("BLANK", "POS")
    assert statuses("右乳外上象限见一肿块，大小约1cm左右。", "mass") == ("POS", "BLANK")  # 左右 = "about"
    assert statuses("Bilateral masses.", "mass") == ("POS", "POS")
    assert statuses("No masses in either breast.", "mass") == ("NEG", "NEG")
    assert statuses("No mass.", "mass") == ("NEG", "NEG")  # general statement: both breasts
    assert statuses("R: mass. L: no mass.", "mass") == ("POS", "NEG")
    assert statuses("RT BREAST: MASS. LT BREAST: NO MASS.", "mass") == ("POS", "NEG")
    assert statuses("A mass in the right breast and calcifications in the left breast.", "mass") == ("POS", "BLANK")
    assert statuses("A mass in the right breast and calcifications in the left breast.", "calcification") == (
        "BLANK", "POS")
    assert statuses("Right breast mass and left breast calcifications.", "calcification") == ("BLANK", "POS")
    assert statuses("右乳未见肿块，左乳见一肿块。", "mass") == ("NEG", "POS")
    assert statuses("RIGHT BREAST:\nA mass at 10 o'clock.\nNo calcifications.\n\nNo calcifications.",
                    "calcification") == ("NEG", "NEG")
    assert statuses("RIGHT BREAST:\nA mass at 10 o'clock.\nNo calcifications.", "calcification") == ("NEG", "BLANK")
    assert statuses("1.右乳见肿块。伴钙化。2.左乳未见异常。", "calcification") == ("POS", "BLANK")  # item carries side
    assert statuses("Possible architectural distortion, right breast.", "architectural_distortion") == (
        "UNC", "BLANK")


# ---------------------------------------------------------------------------------------------- scopes


@pytest.mark.parametrize("text, kind, expected", [
    ("No masses, calcifications, or architectural distortion.", "architectural_distortion", "NEG"),
    ("No dominant mass, suspicious calcifications or distortion are seen.", "calcification", "NEG"),
    ("No mass, but calcifications are seen.", "calcification", "POS"),
    ("No mass, but calcifications are seen.", "mass", "NEG"),
    ("No mass, calcifications are present.", "calcification", "POS"),
    ("A mass without calcifications.", "mass", "POS"),
    ("A mass without calcifications.", "calcification", "NEG"),
    ("Masses and suspicious calcifications are not seen.", "mass", "NEG"),
    ("A mass is present and calcifications are not seen.", "mass", "POS"),
    ("A mass is present and calcifications are not seen.", "calcification", "NEG"),
    ("Negative for masses.", "mass", "NEG"),
    ("The mass is no longer seen.", "mass", "NEG"),
    ("There is neither a mass nor calcification.", "calcification", "NEG"),
    ("No evidence of architectural distortion.", "architectural_distortion", "NEG"),
    ("Possible mass.", "mass", "UNC"),
    ("A mass cannot be excluded.", "mass", "UNC"),
    ("Cannot exclude a small mass.", "mass", "UNC"),
    ("Architectural distortion is suspected.", "architectural_distortion", "UNC"),
    ("Questionable nodule.", "nodule", "UNC"),
    ("Findings may represent an asymmetry.", "asymmetry", "UNC"),
    ("Suspicious calcifications.", "calcification", "POS"),
    ("Probably benign mass.", "mass", "POS"),
    ("Mass, suspicious for malignancy.", "mass", "POS"),
    ("Asymmetry concerning for an underlying mass.", "mass", "UNC"),
    ("Asymmetry concerning for an underlying mass.", "asymmetry", "POS"),
    ("Lymph nodes are not enlarged.", "enlarged_lymph_node", "NEG"),
    ("Enlarged axillary lymph nodes.", "enlarged_lymph_node", "POS"),
    ("The skin and nipples are unremarkable.", "skin_thickening", "NEG"),
    ("Normal axillary lymph nodes.", "enlarged_lymph_node", "NEG"),
    ("No skin or nipple changes.", "nipple_retraction", "NEG"),
    ("The breasts are symmetric.", "asymmetry", "NEG"),
    ("The breasts are heterogeneously dense, which may obscure small masses.", "mass", "BLANK"),
    ("A mass is seen. No other masses.", "mass", "POS"),  # POS beats NEG
    ("No mass. Possible mass at 2 o'clock.", "mass", "UNC"),  # UNC beats NEG
    ("Magnification views of the calcifications are recommended.", "calcification", "BLANK"),
    ("未见明确肿块、钙化及结构扭曲。", "architectural_distortion", "NEG"),
    ("未见肿块，可见钙化。", "calcification", "POS"),
    ("未见肿块但见钙化。", "calcification", "POS"),
    ("乳头无凹陷。", "nipple_retraction", "NEG"),
    ("皮肤未见增厚。", "skin_thickening", "NEG"),
    ("皮肤、乳头未见异常。", "nipple_retraction", "NEG"),
    ("腋下见小淋巴结影，形态正常。", "enlarged_lymph_node", "NEG"),
    ("腋下淋巴结影，未见肿大。", "enlarged_lymph_node", "NEG"),
    ("见无定形钙化。", "calcification", "POS"),
    ("可疑钙化。", "calcification", "POS"),
    ("可疑结构扭曲。", "architectural_distortion", "UNC"),
    ("疑似结构扭曲。", "architectural_distortion", "UNC"),
    ("结构扭曲可能。", "architectural_distortion", "UNC"),
    ("不除外结构扭曲。", "architectural_distortion", "UNC"),
    ("结构扭曲待排。", "architectural_distortion", "UNC"),
    ("结构扭曲？", "architectural_distortion", "UNC"),
    ("结节，考虑纤维腺瘤可能。", "nodule", "POS"),
    ("双乳增生，良性可能大。", "hyperplasia", "POS"),
    ("考虑乳腺增生。", "hyperplasia", "POS"),
    ("双乳腺体分布对称。", "asymmetry", "NEG"),
    ("建议活检。", "mass", "BLANK"),
    ("未见明显异常密度影及钙化。", "calcification", "NEG"),  # "nothing abnormal" also negates what follows
    ("No abnormality of the skin or nipples.", "nipple_retraction", "NEG"),
    ("No mass near the nipple.", "nipple_retraction", "BLANK"),
])
def test_scopes(text: str, kind: str, expected: str) -> None:
    assert status(text, "R", kind) == expected


@pytest.mark.parametrize("kind, phrases", [
    ("mass", ["a mass", "two masses", "a mass lesion", "肿块", "团块影", "占位"]),
    ("nodule", ["a nodule", "a nodular density", "结节", "结节影"]),
    ("calcification", ["calcifications", "microcalcifications", "calcific foci", "钙化灶", "微钙化"]),
    ("architectural_distortion", ["architectural distortion", "distortion", "结构扭曲", "结构纠集"]),
    ("asymmetry", ["an asymmetry", "a focal asymmetry", "asymmetric density", "global asymmetry", "结构不对称",
                   "局灶性不对称"]),
    ("enlarged_lymph_node", ["lymph node enlargement", "enlarged axillary lymph nodes", "lymphadenopathy",
                             "淋巴结肿大", "肿大淋巴结"]),
    ("skin_thickening", ["skin thickening", "thickened skin", "皮肤增厚", "皮肤局限性增厚"]),
    ("nipple_retraction", ["nipple retraction", "nipple inversion", "a retracted nipple", "乳头内陷", "乳头凹陷"]),
    ("thickened_cooper_ligament", ["thickened Cooper's ligaments", "Cooper ligaments are thickened", "悬韧带增粗",
                                   "Cooper韧带增粗"]),
    ("hyperplasia", ["fibrocystic change", "fibrocystic changes", "hyperplasia", "乳腺增生", "小叶增生"]),
])
def test_synonyms(kind: str, phrases: list[str]) -> None:
    for phrase in phrases:
        sep = "" if any("\u4e00" <= c <= "\u9fff" for c in phrase) else " "
        text = f"右乳见{phrase}。" if not sep else f"There is {phrase} in the right breast."
        r = parse_report(text)
        got = {k for k, f in r.breasts["R"].findings.items() if f.status == "POS"}
        assert got == {kind}, (phrase, got)


def test_generic_lesion_is_a_mass_only_with_mass_descriptors() -> None:
    assert status("An irregular lesion with spiculated margins in the right breast.", "R", "mass") == "POS"
    assert status("A lesion in the right breast.", "R", "mass") == "BLANK"
    assert status("右乳见一类圆形低密度影，边界清楚。", "R", "mass") == "POS"


# ---------------------------------------------------------------------------------------------- relations


def test_locations_and_descriptors() -> None:
    r = parse_report("In the left breast, upper outer quadrant at 2 o'clock, posterior depth, there is a 9 mm "
                     "round mass with obscured margins and grouped round calcifications.")
    mass, calc = r.breasts["L"].findings["mass"], r.breasts["L"].findings["calcification"]
    assert mass.locations == ["uoq", "clock_2", "posterior"] == calc.locations
    assert mass.descriptors == ["shape_round", "margin_obscured"]
    assert calc.descriptors == ["dist_grouped", "calc_round"]  # "round" resolved by the finding it modifies
    assert r.breasts["R"].findings["mass"].locations == []


def test_locations_split_between_findings() -> None:
    r = parse_report("A mass in the upper outer quadrant and calcifications in the lower inner quadrant of the "
                     "right breast.")
    assert r.breasts["R"].findings["mass"].locations == ["uoq"]
    assert r.breasts["R"].findings["calcification"].locations == ["liq"]
    zh = parse_report("右乳外上象限见一肿块，内下象限见簇状钙化。")
    assert zh.breasts["R"].findings["mass"].locations == ["uoq"]
    assert zh.breasts["R"].findings["calcification"].locations == ["liq"]


def test_descriptors_carry_to_the_next_sentence() -> None:
    r = parse_report("右乳外上象限见一肿块。形态不规则，边缘毛刺。")
    assert r.breasts["R"].findings["mass"].descriptors == ["shape_irregular", "margin_spiculated"]


def test_negated_words_do_not_attach() -> None:
    r = parse_report("Right breast: architectural distortion spanning 12 mm, without a central mass.")
    assert r.breasts["R"].findings["architectural_distortion"].locations == []
    r = parse_report("Right breast: an oval mass, not spiculated.")
    assert r.breasts["R"].findings["mass"].descriptors == ["shape_oval"]


def test_relations() -> None:
    r = parse_report("Findings:右乳外上象限见一不规则肿块，边缘毛刺。左乳外上象限可疑结构扭曲。; "
                     "Impression:1.右乳外上象限肿块，考虑乳腺癌，BI-RADS 5。2.左乳结构扭曲可能，BI-RADS 0。")
    rel = set(r.relations)
    assert {("mass", "located_at", "uoq"), ("mass", "modified_by", "shape_irregular"),
            ("mass", "modified_by", "margin_spiculated"), ("mass", "suggestive_of", "birads_5"),
            ("mass", "suggestive_of", "breast_cancer")} <= rel
    assert ("mass", "suggestive_of", "birads_0") not in rel  # different impression item
    assert not any(h == "architectural_distortion" for h, _, _ in rel)  # UNC heads give no relation
    assert len(r.relations) == len(rel)  # no duplicates
    assert r.breasts["L"].findings["architectural_distortion"].locations == ["uoq"]  # but UNC keeps its location


def test_negated_diagnosis_gives_no_relation() -> None:
    r = parse_report("IMPRESSION: Benign calcifications. No evidence of malignancy. BI-RADS 2.")
    assert ("calcification", "suggestive_of", "birads_2") in r.relations
    assert ("calcification", "suggestive_of", "breast_cancer") not in r.relations


# ---------------------------------------------------------------------------------------------- phantom reports

_QUADRANT = {"UOQ": "uoq", "UIQ": "uiq", "LOQ": "loq", "LIQ": "liq", "central": "central", "subareolar": "subareolar"}


def _expected_descriptors(f: dict) -> set[str]:
    if f["kind"] == "mass":
        return {"shape_" + f["shape"], "margin_" + f["margin"]}
    if f["kind"] == "calcification":
        return {"calc_" + f["morphology"], "dist_" + f["distribution"]}
    if f["kind"] == "asymmetry" and f["subtype"] == "focal_asymmetry":
        return {"asym_focal"}
    return set()


@pytest.fixture(scope="module")
def phantom_studies() -> list:
    from phantoms.study import generate_study
    return [generate_study(3, i) for i in range(40)]


def test_phantom_reports_parse_to_their_labels(phantom_studies: list) -> None:
    kinds_seen: set[str] = set()
    for study in phantom_studies:
        r = parse_report(study.report)
        for side in ("R", "L"):
            label, got = study.labels["breasts"][side], r.breasts[side]
            where = f"study {study.labels['index']} {side}"
            assert got.density == label["density"], where
            assert got.birads == label["birads"], where
            kinds = {f["kind"] for f in label["findings"]}
            kinds_seen |= kinds
            assert {k for k, f in got.findings.items() if f.status == "POS"} == kinds, where
            assert all(f.status in ("POS", "NEG", "BLANK") for f in got.findings.values()), where
            for f in label["findings"]:
                fr = got.findings[f["kind"]]
                assert _expected_descriptors(f) <= set(fr.descriptors), (where, f, fr.descriptors)
                if not (f["kind"] == "calcification" and f["distribution"] == "diffuse"):
                    loc = f["location"]
                    want = {_QUADRANT[loc["quadrant"]], loc["depth"]}
                    if loc.get("clock") is not None:
                        want.add(f"clock_{loc['clock']}")
                    assert want <= set(fr.locations), (where, loc, fr.locations)
    assert kinds_seen == {"mass", "calcification", "architectural_distortion", "asymmetry"}
    assert {s.labels["breasts"][x]["birads"] for s in phantom_studies for x in "RL"} >= {"0", "1", "2", "3", "4A", "5"}


# ---------------------------------------------------------------------------------------------- speed


def test_speed(phantom_studies: list) -> None:
    texts = [s.report for s in phantom_studies[:20]]
    for name in ("dev_en.jsonl", "dev_zh.jsonl"):
        texts += [json.loads(line)["text"] for line in (REPORTS / name).read_text(encoding="utf-8").splitlines()][:40]
    texts = (texts * 2)[:100]
    parse_report(texts[0])
    start = time.perf_counter()
    for text in texts:
        parse_report(text)
    mean_ms = (time.perf_counter() - start) / len(texts) * 1000
    assert mean_ms < 10, f"{mean_ms:.2f} ms per report"

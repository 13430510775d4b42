"""Compiled regular expressions for ``models.report.parse``, built once at import.

Term patterns come from ``models.report.lexicon`` (so the lexicon stays the one vocabulary); the
grammar around them (cues of negation and uncertainty, sides, BI-RADS and density notations,
list markers, section headers, phrases to ignore) is defined here. All matching runs on NFKC-
normalised text, case-insensitively except where noted. English words are delimited with ASCII
look-arounds rather than ``\\b`` because ``\\b`` sees no boundary between "右乳" and "mass".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from models.report import lexicon

FLAGS = re.IGNORECASE
A = r"(?<![A-Za-z0-9])"  # an ASCII word starts here
Z = r"(?![A-Za-z0-9])"  # an ASCII word ends here
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class Alternation:
    """One compiled alternation whose groups map back to lexicon ids (or other values)."""

    regex: re.Pattern
    values: tuple  # values[i] belongs to group i + 1

    def finditer(self, text: str):
        for m in self.regex.finditer(text):
            yield m.start(), m.end(), self.values[m.lastindex - 1]


def alternation(entries: list[tuple[str, object, int]], flags: int = FLAGS) -> Alternation:
    """entries: (pattern, value, priority); higher priority, then longer pattern, is tried first.
    Equal patterns are merged: their values become a tuple of values."""
    merged: dict[str, list] = {}
    prio: dict[str, int] = {}
    for pattern, value, priority in entries:
        merged.setdefault(pattern, [])
        if value not in merged[pattern]:
            merged[pattern].append(value)
        prio[pattern] = max(prio.get(pattern, -1), priority)
    order = sorted(merged, key=lambda p: (-prio[p], -len(p)))
    regex = re.compile("|".join(f"({p})" for p in order), flags)
    return Alternation(regex, tuple(tuple(merged[p]) for p in order))


def _key(text: str) -> str:
    """Lookup key of a matched or lexicon form: lower case, no spaces, hyphens or apostrophes."""
    return re.sub(r"[\s\-']+", "", text.lower())


def _units(form: str, plural: bool) -> list[str]:
    """Regex pieces of one form, one per character, for the trie."""
    units = []
    for ch in form:
        units.append({" ": r"[\s\-]+", "-": r"[\s\-]?", "'": "'?"}.get(ch, re.escape(ch)))
    if plural and form[-1:].isalpha() and form.isascii():
        if form.endswith("y") and not form.endswith("ey"):
            units[-1] = "(?:y|ies)"
        elif form.endswith(("s", "x", "ch", "sh")):
            units.append("(?:es)?")
        else:
            units.append("s?")
    return units


_DEPTH = "\0depth"  # trie bookkeeping key (never a regex unit)


def _trie_regex(node: dict) -> str:
    """Regex for a trie node: children tried longest first, the end of a form last."""
    end = node.get("", False)
    children = [(u, child) for u, child in node.items() if u and u != _DEPTH]
    if not children:
        return ""
    children.sort(key=lambda uc: -uc[1].get(_DEPTH, 0))
    alts = [u + _trie_regex(child) for u, child in children]
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return f"(?:{body})?" if end else body


def _depth(node: dict) -> int:
    depth = 0
    for u, child in list(node.items()):
        if u and u != _DEPTH:
            depth = max(depth, 1 + _depth(child))
    node[_DEPTH] = depth
    return depth


class TrieAlternation:
    """Literal lexicon forms compiled into prefix tries (English and Chinese separately), values
    recovered from a normalised-key dictionary. Much faster than one group per form."""

    def __init__(self, entries: list[tuple[str, str, bool]]) -> None:
        self.lookup: dict[str, list[str]] = {}
        tries: dict[bool, dict] = {True: {}, False: {}}
        for form, value, plural in entries:
            english = form.isascii()
            keys = [_key(form)]
            if plural and english and form[-1:].isalpha():
                k = keys[0]
                keys += [k + "s", k + "es"] + ([k[:-1] + "ies"] if k.endswith("y") else [])
            for k in keys:
                values = self.lookup.setdefault(k, [])
                if value not in values:
                    values.append(value)
            node = tries[english]
            for unit in _units(form.lower() if english else form, plural and english):
                node = node.setdefault(unit, {})
            node[""] = True
        parts = []
        for english, trie in tries.items():
            if len(trie) > 0:
                _depth(trie)
                body = _trie_regex(trie)
                parts.append(A + "(?:" + body + ")" + Z if english else body)
        self.regex = re.compile("|".join(f"(?:{p})" for p in parts), FLAGS)

    def finditer(self, text: str):
        for m in self.regex.finditer(text):
            values = self.lookup.get(_key(m.group()))
            if values:
                yield m.start(), m.end(), tuple(values)


def _term_entries(category: str, plural: bool, skip=lambda form: False) -> list[tuple[str, str, bool]]:
    entries = []
    for term in lexicon.by_category(category):
        for form in term.en + term.zh:
            if not skip(form):
                entries.append((form, term.id, plural))
    return entries


class Combined:
    """Several matchers run one after the other (their matches may overlap; the parser resolves)."""

    def __init__(self, *parts) -> None:
        self.parts = parts

    def finditer(self, text: str):
        for part in self.parts:
            yield from part.finditer(text)


# ---------------------------------------------------------------------------------------------- findings
_GAP_ZH = r"[^，,。；;：:、\n]{0,6}?"
_FINDING_EXTRA = [
    # English predicative forms; a negation inside ("are not enlarged") is picked up by the cue scan.
    (A + r"skin\s+(?:is\s+|appears\s+|was\s+)?(?:not\s+)?(?:\w+ly\s+)?thickened" + Z, "skin_thickening", 5),
    (A + r"thickening\s+of\s+(?:the\s+)?(?:overlying\s+)?skin" + Z, "skin_thickening", 5),
    (A + r"nipples?\s+(?:is\s+|are\s+|appears?\s+)?(?:not\s+)?(?:retracted|inverted)" + Z, "nipple_retraction", 5),
    (A + r"retraction\s+of\s+(?:the\s+)?nipples?" + Z, "nipple_retraction", 5),
    (A + r"cooper'?s?\s+ligaments?\s+(?:are\s+|is\s+|appear\s+)?(?:not\s+)?(?:\w+ly\s+)?thickened" + Z,
     "thickened_cooper_ligament", 5),
    (A + r"thicken(?:ed|ing)\s+(?:of\s+)?(?:the\s+)?(?:cooper'?s?|suspensory)\s+ligaments?" + Z,
     "thickened_cooper_ligament", 5),
    (A + r"(?:axillary\s+|intramammary\s+)?lymph\s*nodes?\s+(?:are\s+|is\s+|appears?\s+|were\s+|was\s+)?"
         r"(?:not\s+)?(?:\w+ly\s+)?enlarged" + Z, "enlarged_lymph_node", 5),
    (A + r"(?:enlarged|abnormal|suspicious|pathologic(?:al)?|swollen|bulky|morphologically\s+abnormal)\s+"
         r"(?:(?:right|left|bilateral|ipsilateral|axillary|intramammary|level\s+i{1,3})\s+){0,2}"
         r"(?:lymph\s*)?nodes?" + Z, "enlarged_lymph_node", 5),
    (A + r"enlargement\s+of\s+(?:the\s+)?(?:\w+\s+){0,2}?lymph\s*nodes?" + Z, "enlarged_lymph_node", 5),
    (A + r"(?:axillary\s+)?(?:lymph\s*node\s+enlargement|(?:lymph)?adenopathy)" + Z, "enlarged_lymph_node", 5),
    # Chinese organ + change, with up to six characters between them ("皮肤未见增厚", "乳头稍凹陷").
    (r"皮肤" + _GAP_ZH + r"(?:增厚|肥厚)", "skin_thickening", 5),
    (r"乳头" + _GAP_ZH + r"(?:凹陷|内陷|回缩|内缩)", "nipple_retraction", 5),
    (r"(?:悬韧带|cooper'?s?\s*韧带|库珀韧带|库柏韧带|韧带)" + _GAP_ZH + r"(?:增粗|增厚)",
     "thickened_cooper_ligament", 5),
    (r"淋巴结(?:影)?" + _GAP_ZH + r"(?:肿大|增大)", "enlarged_lymph_node", 5),
    (r"淋巴结(?:影)?[，,](?:未见|无)(?:明显)?(?:肿大|增大)", "enlarged_lymph_node", 6),
    (r"(?:肿大|增大)(?:的)?淋巴结(?:影)?", "enlarged_lymph_node", 5),
]
FINDINGS = Combined(TrieAlternation(_term_entries("finding", plural=True)), alternation(_FINDING_EXTRA))
# Words that make a Chinese finding mention a predicate ("皮肤增厚" is a clause, not a noun).
PREDICATIVE_ZH = re.compile(r"增厚|肥厚|凹陷|内陷|回缩|内缩|增粗|肿大|增大")

# Generic words promoted to "mass" when a mass shape or margin descriptor is in the same clause.
GENERIC_LESION = re.compile(A + r"(?:lesions?|opacit(?:y|ies)|densit(?:y|ies))" + Z + r"|病灶|病变|高密度影|密度影",
                            FLAGS)

# ---------------------------------------------------------------------------------------------- others
class _Clock:
    """Clock positions: "10 o'clock", "10:30 o'clock", "the 2:00 position", "10点钟方向"."""

    regex = re.compile(
        A + r"(?P<a>1[0-2]|0?[1-9])(?::[0-5]\d)?\s*(?:o'?\s*clock|o\s+clock)" + Z
        + r"|" + A + r"(?P<b>1[0-2]|0?[1-9]):[03]0(?=\s+(?:position|location|axis))"
        + r"|(?<![0-9.])(?P<c>1[0-2]|[1-9])(?:[:.][0-5]\d)?\s*点(?:钟|半)?(?:方向|位置|处)?", FLAGS)

    def finditer(self, text: str):
        for m in self.regex.finditer(text):
            hour = int(m.group("a") or m.group("b") or m.group("c"))
            yield m.start(), m.end(), (f"clock_{hour}",)


LOCATIONS = Combined(
    TrieAlternation(_term_entries("location", plural=False, skip=lambda f: "o'clock" in f or ":00" in f
                                  or f.endswith("点") or f.endswith("点钟"))),
    _Clock())

_DESCRIPTOR_PLURAL_OK = {"cluster", "spiculation", "calcification", "group"}
DESCRIPTORS = TrieAlternation([(f, t.id, f.split()[-1] in _DESCRIPTOR_PLURAL_OK)
                               for t in lexicon.by_category("descriptor") for f in t.en + t.zh])
DIAGNOSES = TrieAlternation(_term_entries("diagnosis", plural=True))


def _letter_form(form: str) -> bool:
    """Density forms that are just a letter notation ("acr a", "C型"): handled by DENSITY_LETTER."""
    return bool(re.search(r"(?:^|\s)[a-d]$", form, re.I) or re.fullmatch(r"(?:ACR )?[A-D]型", form))


DENSITY_WORDS = TrieAlternation(_term_entries("density", plural=False, skip=_letter_form))
DENSITY_LETTER = re.compile(
    A + r"(?:acr|density|composition|breast\s+density|breast\s+composition|type|category|class|grade)"
    r"(?:\s*(?:density|composition|type|category|class))?\s*[:=\-]?\s*(?P<v>[a-d])" + Z
    + r"|" + A + r"acr(?:\s*(?:density|composition|type))?\s*[:=\-]?\s*(?P<n>[1-4])(?![0-9]|\.\d)"
    + r"|(?<![0-9A-Za-z])(?P<z>[a-d])\s*(?:型|类)(?!超)",
    FLAGS)

_ROMAN = r"iv\s*[abc]?|vi|v|iii|ii|i"
BIRADS = re.compile(
    A + r"(?:acr\s*)?(?:bi[\s\-_.]*rads|birads)(?:\s*®)?(?:\s*assessment)?"
    r"(?:\s*(?:category|cat\.?|classification|class|分类|类别|分级|评估|评级))?\s*[:=\-]?\s*(?:\(?\s*)"
    r"(?:(?:category|cat\.?)\s*)?"
    r"(?:(?P<d>[0-6])(?:(?P<s1>[abc])|\s*-?\s*(?-i:(?P<s2>[ABC])))?(?![0-9A-Za-z])|(?P<r>" + _ROMAN + r")(?![A-Za-z]))"
    r"(?:\s*类)?"
    + r"|" + A + r"category\s*(?P<cd>[0-6])(?P<cs>[abc])?(?![0-9A-Za-z])"
    + r"|(?<![0-9A-Za-z.])(?P<zd>[0-6])(?P<zs>[abc])?\s*类"
    + r"|" + A + r"(?P<zr>iv[abc]?|vi|v|iii|ii)\s*类",
    FLAGS)
ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6"}

# ---------------------------------------------------------------------------------------------- sides
SIDE_BOTH = re.compile(
    A + r"(?:(?:right|left)\s+(?:breast\s+)?(?:and|or|&|/)\s+(?:right|left)\s+breasts?"
    r"|(?:both|bilateral(?:ly)?|either|each)\s+(?:breasts?|sides?|axillae|axillas)"
    r"|bilateral(?:ly)?|breasts|overall|both\s+sides)" + Z
    + r"|双侧(?:乳腺|乳房)?|双乳(?:腺|房)?|两侧(?:乳腺|乳房)?|两乳|左右乳|综合|总体|整体", FLAGS)
SIDE_RIGHT = re.compile(A + r"(?:right(?:\s+breast|\s+side|[\s\-]*sided)?|rt)" + Z + r"\.?"
                        + r"|右侧(?:乳腺|乳房)?|(?<!左)右乳(?:腺|房)?|(?<!左)右(?=腋|[:：])", FLAGS)
SIDE_LEFT = re.compile(A + r"(?:left(?:\s+breast|\s+side|[\s\-]*sided)?|lt)" + Z + r"\.?"
                       + r"|左侧(?:乳腺|乳房)?|左乳(?:腺|房)?|左(?=腋|[:：])", FLAGS)
SIDE_LETTER = re.compile(r"(?<![A-Za-z0-9\-])(?P<s>R|L)(?![A-Za-z0-9])")  # case-sensitive
# English prepositions that make a side phrase describe what precedes it ("... in the left breast").
BACK_PREP = re.compile(r"(?:" + A + r"(?:in|of|within|involving|on|at|for|to|from|affecting|throughout)\s+"
                       r"(?:the\s+)?|见于|位于|于)\s*$", FLAGS)
SIDE_HEADER_REST = re.compile(r"^[\s(（]*(?:breast|breasts|side|findings?|impressions?|mammogram|乳腺|乳房)?[\s)）]*$",
                              FLAGS)

# ---------------------------------------------------------------------------------------------- cues
# (pattern, kind, direction): kind neg | unc | normal | term; direction pre | post | both.
_VERB_SEEN = (r"(?:seen|identified|visuali[sz]ed|visible|demonstrated|present|evident|appreciated|detected|"
              r"noted|observed|apparent|shown)")
_CUES = [
    # uncertainty (listed first: "cannot be excluded" must not read as a negation)
    (A + r"(?:cannot|can\s*not|can't|could\s+not)\s+(?:be\s+)?(?:entirely\s+|completely\s+)?"
         r"(?:excluded|ruled\s+out)" + Z, "unc", "post"),
    (A + r"(?:is\s+|are\s+)?not\s+(?:excluded|ruled\s+out)" + Z, "unc", "post"),
    (A + r"(?:cannot|can\s*not|can't|could\s+not)\s+(?:entirely\s+|completely\s+)?(?:exclude|rule\s+out)" + Z,
     "unc", "pre"),
    (A + r"(?:to\s+)?(?:rule\s+out|r/o|to\s+exclude)" + Z, "unc", "pre"),
    (A + r"(?:possible|possibly|questionable|questionably|question\s+of|suspicion\s+of|suspicious\s+for|"
         r"concerning\s+for|worrisome\s+for|equivocal|may\s+represent|may\s+be|might\s+be|might\s+represent|"
         r"could\s+represent|could\s+be|presumed)" + Z, "unc", "pre"),
    (A + r"(?:probable|probably)" + Z + r"(?![\s\-]+benign)", "unc", "pre"),
    (A + r"(?:is\s+|are\s+)?(?:suspected|questioned|possible)" + Z, "unc", "both"),
    (A + r"suspect" + Z, "unc", "pre"),
    (r"不能除外|不能排除|无法除外|无法排除|不除外|不排除|未除外|未排除|除外|排除|可能", "unc", "both"),
    (r"待排除|待除外|待排|待查", "unc", "post"),
    (r"疑似|疑为|(?<!可)疑(?!问)|可疑(?!恶性钙化|恶性微钙化|钙化|微钙化|细小钙化|的钙化)", "unc", "pre"),
    (r"\?", "unc", "both"),
    # organ is normal
    (A + r"(?:within\s+normal\s+limits|unremarkable|normal(?:\s+in\s+appearance)?|intact|"
         r"no\s+(?:abnormalit(?:y|ies)|changes?))" + Z, "normal", "post"),
    (r"未见明显异常|未见明确异常|未见异常改变|未见异常|无明显异常|无异常|未见特殊|无特殊|无殊|正常|如常", "normal", "post"),
    # negation
    (A + r"(?:(?:is|are|was|were|has\s+been|have\s+been)\s+)?(?:not|no\s+longer)\s+(?:been\s+)?" + _VERB_SEEN + Z,
     "neg", "post"),
    (A + r"(?:absent|ruled\s+out|excluded|(?:has\s+|have\s+)?resolved|none)" + Z, "neg", "post"),
    (A + r"(?:no\s+(?:evidence|signs?|features?|suggestion)\s+of|negative\s+for|free\s+of|absence\s+of|"
         r"lack\s+of|without|neither|nor|no|not)" + Z, "neg", "pre"),
    (r"未见|未发现|未显示|未示|未探及|未扪及|未触及|没有|不伴有|不伴|未伴|无(?!法)|未", "neg", "pre"),
    (r"消失|阴性|\(-\)", "neg", "post"),
    # terminators of a forward scope
    (A + r"(?:but|however|although|though|whereas|except(?:\s+for)?|other\s+than|apart\s+from|aside\s+from|"
         r"besides|while|yet|there\s+(?:is|are)|with\s+the\s+exception\s+of)" + Z, "term", "pre"),
    (r"但是|但|然而|而|另见|另|可见|并见|仅见|只见", "term", "pre"),
]
NEGATED_NORMAL = re.compile(r"未|无|no\s", FLAGS)
CUES = alternation([(p, (kind, direction), 9 - i // 4) for i, (p, kind, direction) in enumerate(_CUES)])

# ---------------------------------------------------------------------------------------------- organs
# Body parts whose "normal" statement makes a finding NEG ("皮肤、乳头未见异常").
ORGANS = alternation([
    (A + r"skin" + Z, "skin_thickening", 0),
    (A + r"(?:nipples?(?:[\s\-]+areolar\s+complex(?:es)?)?|areolae?)" + Z, "nipple_retraction", 0),
    (A + r"(?:cooper'?s?|suspensory)\s+ligaments?" + Z, "thickened_cooper_ligament", 0),
    (A + r"(?:axillary\s+|intramammary\s+)?(?:lymph\s*)?nodes?" + Z, "enlarged_lymph_node", 0),
    (r"皮肤", "skin_thickening", 0), (r"乳头|乳晕", "nipple_retraction", 0),
    (r"悬韧带|库珀韧带|cooper'?s?\s*韧带|韧带", "thickened_cooper_ligament", 0),
    (r"淋巴结", "enlarged_lymph_node", 0),
])
# "No associated calcifications": refers to the finding just described, not to both breasts.
ASSOCIATED = re.compile(A + r"associated" + Z + r"|伴|其内|周围", FLAGS)
CHANGE_WORDS = re.compile(A + r"(?:changes?|abnormalit(?:y|ies))" + Z + r"|异常|改变", FLAGS)

# "The breasts are symmetric" / "双乳对称": asymmetry explicitly absent.
SYMMETRIC = re.compile(A + r"symmetric(?:al|ally)?" + Z + r"|(?<![不非])(?:大致|基本)?对称(?!性?分布)", FLAGS)

# Spans whose findings are not findings: "which may obscure small masses", "3 cm from the nipple".
IGNORE = re.compile(
    A + r"(?:may|might|can|could|which\s+may|which\s+can)\s+(?:\w+\s+)?(?:obscure|mask|hide|limit|lower|reduce)s?"
    r"(?:\s+\w+){0,4}?\s+(?:masses|mass|lesions?|findings?|abnormalit(?:y|ies)|cancers?|carcinomas?|"
    r"sensitivity)" + Z
    + r"|" + A + r"(?:lowers?|reduces?|limits?)\s+the\s+sensitivity(?:\s+of\s+mammography)?" + Z
    + r"|" + A + r"\d+(?:\.\d+)?\s*(?:cm|mm)\s+from\s+(?:the\s+)?nipple" + Z
    + r"|" + A + r"posterior\s+nipple\s+line" + Z
    + r"|距(?:离)?乳头[^，,。；;]{0,10}|(?:可能)?(?:掩盖|遮盖|降低)[^，,。；;]{0,12}",
    FLAGS)

# A clause that recommends something asserts nothing: "Magnification views of the calcifications
# recommended", "建议活检".
RECOMMEND = re.compile(A + r"(?:recommend(?:ed|s|ation|ations)?|advised?|suggested|to\s+evaluate|"
                           r"follow[\s\-]*up\s+of)" + Z + r"|建议|请结合|随访|复查", FLAGS)

# ---------------------------------------------------------------------------------------------- segmentation
LIST_MARKER = re.compile(
    r"(?:^|(?<=[\n。;；:：])|(?<=[.!?]\s)|(?<=[.!?]))[ \t]*"
    r"(?P<m>\(\s*\d{1,2}\s*\)|\d{1,2}\s*[.、)](?!\d)|[一二三四五六七八九十]\s*[、.])", re.M)
MARKER_BLOCK = re.compile(r"(?:rads|category|分类|类别|acr|density|type|size|measur\w*|约|大小)\s*[:：]?\s*$", FLAGS)
SENTENCE_END = re.compile(r"[。;；!?！？\n]|\.(?=\s|$|[\u3400-\u9fff])")
ABBREVIATION = re.compile(A + r"(?:approx|e\.g|i\.e|vs|cf|fig|no|dr|mr|mrs|ms|st|dx|hx|pt)$", FLAGS)
CHUNK_END = re.compile(r"(?<![0-9])[,，:：]|[,，:：](?![0-9])")

# ---------------------------------------------------------------------------------------------- list-likeness
STOP_EN = re.compile(
    A + r"(?:and|or|nor|the|a|an|any|other|of|in|at|on|to|either|both|breast|breasts|suspicious|definite|"
        r"definitive|discrete|dominant|significant|new|associated|evidence|area|areas|with|within|mammographic|"
        r"mammographically|obvious|clear|specific|sign|signs|findings?|mm|cm|abnormal|focal|grouped|clustered)" + Z,
    FLAGS)
STOP_ZH = re.compile(r"以及|或者|[、及和或与等的]|明显|明确|可疑|异常|其他|其它|肯定|确切|典型")
WORDS = re.compile(r"[A-Za-z\u3400-\u9fff]")
CONTINUE_EN = re.compile(A + r"(?:or|nor)" + Z, FLAGS)
CONTINUE_ZH = re.compile(r"^\s*(?:以及|或者|及|或|和|与|亦无|也无)")

"""Rule-based mammography report parser: free text (English or Chinese) -> ``ReportResult``.

It plays the role of MammoRGTool (research notes §5) without a learned model: per breast the ACR
density, the BI-RADS category and the status (POS / NEG / UNC / BLANK) of MammoRG's ten findings
with their locations and descriptors, plus relation triples (finding, located_at | modified_by |
suggestive_of, term). Vocabulary: ``models.report.lexicon``; patterns: ``models.report.patterns``.
The rules and the decisions behind them are documented in docs/report-parser.md.

Pipeline, per section (findings, impression), on NFKC-normalised text:

1. segmentation: numbered list items -> sentences (. ; 。 ； newline ...) -> chunks (, ， : ：);
2. mentions: findings, locations, descriptors, diagnoses, density, BI-RADS, sides, cues;
   overlaps resolved longest-first (a finding and a descriptor may overlap);
3. sides per chunk (several sides in one chunk split it), inherited within the sentence, the
   numbered item, or from a side header ("Right breast:"), else both breasts;
4. negation / uncertainty scopes (forward, backward or both, bounded by the chunk and extended over
   list-like chunks), the nearest covering cue deciding a mention's status;
5. descriptors / locations attached to the POS/UNC findings of their sentence;
6. aggregation: POS > UNC > NEG > BLANK per breast and finding; density (unilateral before
   bilateral, first wins); BI-RADS (impression first, unilateral before bilateral, the most
   severe wins with 1 < 2 < 3 < 0 < 4A < 4B < 4C < 5 < 6).

Pure Python (stdlib only); never imports torch.
"""
from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass, field

from models.report import lexicon
from models.report import patterns as P
from models.report.result import MAMMORG_FINDINGS, ReportResult

__all__ = ["BIRADS_SEVERITY", "detect_language", "normalize", "parse_report", "split_sections"]

# Least to most severe; "0" (incomplete, needs work-up) ranks above "3" and below suspicious.
BIRADS_SEVERITY: tuple[str, ...] = ("1", "2", "3", "0", "4A", "4B", "4C", "5", "6")
_BIRADS_RANK = {c: i for i, c in enumerate(BIRADS_SEVERITY)}
_STATUS_RANK = {"BLANK": 0, "NEG": 1, "UNC": 2, "POS": 3}
_BOTH = frozenset("RL")
_SIDESET = {"R": frozenset("R"), "L": frozenset("L"), "B": _BOTH}
_FINDING_SET = frozenset(MAMMORG_FINDINGS)
_HEADABLE = ("finding", "generic", "organ", "diagnosis", "sym")
_KIND_PRIORITY = {"birads": 0, "density": 1, "finding": 2, "generic": 3, "descriptor": 4, "diagnosis": 5,
                  "location": 6, "sym": 7}
_APPLIES = {t.id: t.applies_to for t in lexicon.by_category("descriptor")}
_GROUP = {t.id: t.group for t in lexicon.terms()}

# ---------------------------------------------------------------------------------------------- text


_TRANSLATE = {0x2018: "'", 0x2019: "'", 0x2032: "'", 0x201C: '"', 0x201D: '"', 0x2212: "-", 0x00AD: None,
              0x0D: None, 0x09: " "}
_TRANSLATE.update({c: "-" for c in range(0x2010, 0x2016)})
_CIRCLED = {0x2460 + i: f"\n({i + 1}) " for i in range(20)}  # ① .. ⑳
_CIRCLED.update({0x2776 + i: f"\n({i + 1}) " for i in range(10)})  # ❶ .. ❿
_CIRCLED.update({0x3251 + i: f"\n({i + 21}) " for i in range(15)})


def normalize(text: str) -> str:
    """NFKC (full-width letters, digits and punctuation to ASCII, "Ⅳ" -> "IV"), typographic quotes
    and dashes to ASCII, circled numbers to "(n)" list markers, no CR or tabs."""
    text = (text or "").translate(_CIRCLED)
    return unicodedata.normalize("NFKC", text).translate(_TRANSLATE)


def detect_language(text: str) -> str:
    """"zh" when the text holds any CJK character, else "en"."""
    return "zh" if P.CJK.search(text or "") else "en"


_HEADER_WORDS = {
    "findings": ["findings", "finding", "report", "description", "observations", "影像所见", "检查所见",
                 "钼靶所见", "x线所见", "x线表现", "影像表现", "检查描述", "所见", "表现", "描述"],
    "impression": ["impressions", "impression", "overall impression", "final assessment", "assessment",
                   "conclusions", "conclusion", "diagnosis", "diagnoses", "opinion", "summary", "诊断意见",
                   "影像诊断", "影像学诊断", "诊断结果", "检查结论", "检查意见", "诊断", "印象", "意见", "结论", "提示"],
    "recommendation": ["recommendations", "recommendation", "plan", "建议", "处理意见"],
    "other": ["clinical history", "history", "clinical information", "indications", "indication",
              "reason for exam", "reason for study", "technique", "procedure", "comparison", "comparisons",
              "examination", "exam", "临床诊断", "临床病史", "病史", "临床资料", "临床信息", "检查方法", "检查技术",
              "检查部位", "检查项目", "检查技术与方法", "对比"],
}


def _header_alts() -> str:
    alts = []
    for kind, words in _HEADER_WORDS.items():
        body = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
        alts.append(f"(?P<{kind}>{body})")
    return "|".join(alts)


_HEADER = re.compile(
    r"(?:^|(?<=[;；。.!?]))[ \t]*(?:[【\[][ \t]*(?:" + _header_alts() + r")[ \t]*[】\]][ \t]*[:：]?"
    r"|(?:" + _header_alts().replace("?P<", "?P<x_") + r")[ \t]*(?:[:：]|(?=\n)|\Z))",
    re.IGNORECASE | re.MULTILINE)


def _sections(text: str) -> list[tuple[str, str]]:
    """[(kind, text)] in order; kinds findings | impression | recommendation | other | preamble."""
    matches = list(_HEADER.finditer(text))
    if not matches:
        return [("findings", text)]
    out = [("preamble", text[:matches[0].start()])]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.append(((m.lastgroup or "other").replace("x_", ""), text[m.end():end]))
    return out


def _clean(part: str) -> str:
    return part.strip(" \t\r\n;；")


def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a report.

    Headers: "FINDINGS:" / "IMPRESSION:" (any case, also "Assessment", "Conclusion" ...), MammoRG's
    one-line "Findings:...; Impression:...", and Chinese 所见 / 检查所见 / 影像所见 / 诊断 / 诊断意见 /
    印象 / 意见 / 结论, with or without 【】 brackets, each at the start of a line or after ; 。 . and
    followed by a colon or a line end. Recommendation sections are appended to the impression;
    history, technique, comparison and similar sections are left out. Without a findings header,
    the text before the first header is the findings; without any header, the whole text is.
    """
    parts = _sections(text or "")
    if len(parts) == 1:
        return _clean(parts[0][1]), ""
    has_findings = any(kind == "findings" for kind, _ in parts)
    findings = [_clean(t) for kind, t in parts if kind == "findings" or (kind == "preamble" and not has_findings)]
    impression = [_clean(t) for kind, t in parts if kind in ("impression", "recommendation")]
    return "\n".join(t for t in findings if t), "\n".join(t for t in impression if t)


# ---------------------------------------------------------------------------------------------- data


@dataclass(eq=False)
class _Mention:
    start: int
    end: int
    kind: str  # finding generic location descriptor diagnosis density birads sym organ
    ids: tuple
    sides: frozenset = _BOTH
    explicit: bool = False  # the side came from a side word, not the both-breasts default
    unresolved: bool = False
    status: str = "POS"
    negated_scope: bool = False
    sentence: int = -1
    locations: list = field(default_factory=list)
    descriptors: list = field(default_factory=list)


@dataclass(eq=False)
class _Cue:
    start: int
    end: int
    kind: str  # neg unc normal term
    direction: str  # pre post both


@dataclass(eq=False)
class _Side:
    start: int
    end: int
    side: str  # R L B
    back: bool = False


@dataclass(eq=False)
class _Chunk:
    start: int
    end: int
    sep: str
    sentence: int
    regions: list = field(default_factory=list)  # (start, end, side)
    side: str | None = None  # inherited side when there are no regions


@dataclass(eq=False)
class _Sentence:
    start: int
    end: int
    item: int  # numbered list item index, -1 outside lists
    para: int
    chunks: list = field(default_factory=list)
    header: str | None = None


def _overlaps(a, b) -> bool:
    return a.start < b.end and b.start < a.end


class _Spans:
    """Sorted (start, end) spans with fast containment and overlap queries."""

    def __init__(self, spans) -> None:
        self.spans = sorted(spans)
        self.starts = [a for a, _ in self.spans]
        self.longest = max((b - a for a, b in self.spans), default=0)

    def _near(self, a: int, b: int) -> list[tuple[int, int]]:
        return self.spans[bisect.bisect_left(self.starts, a - self.longest):bisect.bisect_left(self.starts, b)]

    def covers(self, a: int, b: int, longer: bool = False) -> bool:
        """Some span contains [a, b) (and is strictly longer, when ``longer``)."""
        return any(x <= a and b <= y and (not longer or y - x > b - a) for x, y in self._near(a, b))

    def meets(self, a: int, b: int) -> bool:
        """Some span overlaps [a, b)."""
        return any(x < b and a < y for x, y in self._near(a, b))


def _compatible(a: _Mention, b: _Mention) -> bool:
    kinds = {a.kind, b.kind}
    if kinds in ({"finding", "descriptor"}, {"generic", "descriptor"}):
        return True
    if kinds == {"finding", "location"}:
        loc = a if a.kind == "location" else b
        return loc.ids[0] not in ("nipple", "skin")
    return False


def _resolve(mentions: list, compatible=_compatible) -> list:
    """Greedy longest-first selection of non-conflicting spans, returned in text order."""
    if not mentions:
        return []
    mentions.sort(key=lambda m: (-(m.end - m.start), _KIND_PRIORITY.get(getattr(m, "kind", ""), 9), m.start))
    longest = mentions[0].end - mentions[0].start
    starts: list[int] = []
    kept: list = []
    for m in mentions:
        lo = bisect.bisect_left(starts, m.start - longest)
        hi = bisect.bisect_left(starts, m.end)
        if all(not _overlaps(m, k) or compatible(m, k) for k in kept[lo:hi]):
            i = bisect.bisect_left(starts, m.start)
            starts.insert(i, m.start)
            kept.insert(i, m)
    return kept


def _resolve_plain(spans: list) -> list:
    return _resolve(spans, compatible=lambda a, b: False)


# ---------------------------------------------------------------------------------------------- one section


class _Section:
    """Everything found in one section (findings or impression) of a report."""

    def __init__(self, raw: str, name: str) -> None:
        self.name = name
        text = normalize(raw)
        self.items: list[int] = []  # start offsets of numbered items
        chars = list(text)
        for m in P.LIST_MARKER.finditer(text):
            a, b = m.span("m")
            if P.MARKER_BLOCK.search(text[max(0, a - 24):a]):
                continue
            self.items.append(a)
            chars[a:b] = " " * (b - a)
        self.text = "".join(chars)
        self._starts: list[int] | None = None  # cached mention starts (reset when mentions change)
        self._segment()
        self._find_mentions()
        self._assign_sides()
        self._scopes()
        self._statuses()
        self._attach()

    # ------------------------------------------------------------------ segmentation
    def _segment(self) -> None:
        text = self.text
        cuts = set(self.items)
        for m in P.SENTENCE_END.finditer(text):
            if m.group() == "." and P.ABBREVIATION.search(text[max(0, m.start() - 6):m.start()]):
                continue
            cuts.add(m.end())
        paras = [m.start() for m in re.finditer(r"\n[ \t]*\n", text)]
        bounds = sorted(c for c in cuts if 0 < c < len(text))
        self.sentences: list[_Sentence] = []
        self.chunks: list[_Chunk] = []
        start = 0
        for end in bounds + [len(text)]:
            seg = text[start:end]
            if seg.strip():
                item = bisect.bisect_right(self.items, start) - 1  # -1: before the first item, or no list
                sent = _Sentence(start, end, item, bisect.bisect_right(paras, start))
                idx = len(self.sentences)
                self.sentences.append(sent)
                cstart = start
                for cm in P.CHUNK_END.finditer(text, start, end):
                    self._add_chunk(sent, idx, cstart, cm.start(), cm.group())
                    cstart = cm.end()
                self._add_chunk(sent, idx, cstart, end, "")
            start = end
        self.sent_starts = [s.start for s in self.sentences]
        self.chunk_starts = [c.start for c in self.chunks]

    def _add_chunk(self, sent: _Sentence, idx: int, a: int, b: int, sep: str) -> None:
        if self.text[a:b].strip() or sep:
            chunk = _Chunk(a, b, sep, idx)
            sent.chunks.append(chunk)
            self.chunks.append(chunk)

    def sentence_of(self, pos: int) -> int:
        return max(0, bisect.bisect_right(self.sent_starts, pos) - 1)

    def chunk_of(self, pos: int) -> _Chunk:
        return self.chunks[max(0, bisect.bisect_right(self.chunk_starts, pos) - 1)]

    # ------------------------------------------------------------------ mentions
    def _find_mentions(self) -> None:
        text = self.text
        cands: list[_Mention] = []
        for kind, alt in (("finding", P.FINDINGS), ("location", P.LOCATIONS), ("descriptor", P.DESCRIPTORS),
                          ("diagnosis", P.DIAGNOSES), ("density", P.DENSITY_WORDS)):
            for a, b, ids in alt.finditer(text):
                if kind == "density":
                    ids = tuple(lexicon.get(i).value for i in ids)
                cands.append(_Mention(a, b, kind, ids))
        for m in P.GENERIC_LESION.finditer(text):
            cands.append(_Mention(m.start(), m.end(), "generic", ("mass",)))
        for m in P.DENSITY_LETTER.finditer(text):
            if m.group("n"):
                letter = "ABCD"[int(m.group("n")) - 1]
            else:
                letter = (m.group("v") or m.group("z")).upper()
            cands.append(_Mention(m.start(), m.end(), "density", (letter,)))
        for m in P.BIRADS.finditer(text):
            cands.append(_Mention(m.start(), m.end(), "birads", (_birads_value(m),)))
        for m in P.SYMMETRIC.finditer(text):
            cands.append(_Mention(m.start(), m.end(), "sym", ("asymmetry",)))
        ignore = _Spans((m.start(), m.end()) for m in P.IGNORE.finditer(text))
        advice = {id(c) for c in self.chunks if P.RECOMMEND.search(text, c.start, c.end)}
        asserting = ("finding", "generic", "diagnosis", "descriptor", "location")
        self.mentions = [m for m in _resolve(cands) if not ignore.covers(m.start, m.start + 1) and not (
            m.kind in asserting and id(self.chunk_of(m.start)) in advice)]
        findings = _Spans((m.start, m.end) for m in self.mentions if m.kind == "finding")
        self.organs = [_Mention(a, b, "organ", ids) for a, b, ids in P.ORGANS.finditer(text)]
        self.organs = [o for o in self.organs
                       if not ignore.covers(o.start, o.start + 1) and not findings.meets(o.start, o.end)]
        cues = [_Cue(a, b, kind, direction) for a, b, (kind, direction) in
                ((a, b, v[0]) for a, b, v in P.CUES.finditer(text))]
        # a cue inside a longer word is no cue ("无" in "无定形", amorphous)
        words = _Spans((m.start, m.end) for m in self.mentions if m.kind in ("descriptor", "location", "diagnosis"))
        self.cues = [c for c in _resolve_plain(cues) if not ignore.covers(c.start, c.start + 1)
                     and not words.covers(c.start, c.end, longer=True)]
        sides: list[_Side] = []
        for regex, side in ((P.SIDE_BOTH, "B"), (P.SIDE_RIGHT, "R"), (P.SIDE_LEFT, "L")):
            sides += [_Side(m.start(), m.end(), side) for m in regex.finditer(text)]
        sides += [_Side(m.start(), m.end(), m.group("s")) for m in P.SIDE_LETTER.finditer(text)]
        self.sides = _resolve_plain(sides)
        for s in self.sides:
            chunk = self.chunk_of(s.start)
            s.back = bool(P.BACK_PREP.search(text[max(chunk.start, s.start - 30):s.start]))
        self.side_starts = [s.start for s in self.sides]

    # ------------------------------------------------------------------ sides
    def _chunk_regions(self, chunk: _Chunk) -> None:
        inside = self._sides_in(chunk.start, chunk.end)
        if not inside:
            return
        groups: list[list[_Side]] = []
        for s in inside:
            if groups and groups[-1][-1].side == s.side:
                groups[-1].append(s)
            else:
                groups.append([s])
        cuts = [chunk.start]
        for prev, cur in zip(groups, groups[1:]):
            p, c = prev[-1], cur[0]
            if not c.back:
                cut = c.start
            elif p.back:
                cut = p.end
            else:
                conj = list(re.finditer(P.A + r"(?:and|with|or)" + P.Z + r"|[,;、及和与]", self.text[p.end:c.start],
                                        re.I))
                cut = p.end + conj[-1].start() if conj else p.end
            cuts.append(max(cut, cuts[-1]))
        cuts.append(chunk.end)
        chunk.regions = [(cuts[i], cuts[i + 1], g[0].side) for i, g in enumerate(groups)]

    def _assign_sides(self) -> None:
        for chunk in self.chunks:
            self._chunk_regions(chunk)
        header: str | None = None
        para = -1
        item_side: dict[int, str] = {}
        for sent in self.sentences:
            if sent.para != para:
                header, para = None, sent.para
            first = sent.chunks[0] if sent.chunks else None
            if first is not None and first.regions and len({r[2] for r in first.regions}) == 1:
                if self._side_only(first) and (first.sep in (":", "：") or len(sent.chunks) == 1):
                    header = first.regions[0][2]
            sent.header = header
            chunks = sent.chunks
            for ci, chunk in enumerate(chunks):
                if chunk.regions:
                    continue
                side = None
                for prev in reversed(chunks[:ci]):
                    if prev.regions:
                        side = prev.regions[-1][2]
                        break
                if side is None:
                    for nxt in chunks[ci + 1:]:
                        if nxt.regions:
                            first_side = self._sides_in(nxt.start, nxt.end)[0]
                            if first_side.back or self._side_only(nxt):
                                side = nxt.regions[0][2]
                            break
                if side is None and sent.item >= 0:
                    side = item_side.get(sent.item)
                if side is None:
                    side = header
                chunk.side = side
            explicit = [c.regions[-1][2] for c in chunks if c.regions]
            if explicit and sent.item >= 0:
                item_side[sent.item] = explicit[-1]
        for m in self.mentions + self.organs:
            self._set_sides(m)

    def _sides_in(self, a: int, b: int) -> list[_Side]:
        return self.sides[bisect.bisect_left(self.side_starts, a):bisect.bisect_left(self.side_starts, b)]

    def _side_only(self, chunk: _Chunk) -> bool:
        """True when the chunk is just a side phrase ("right breast", "左乳")."""
        rest = list(self.text[chunk.start:chunk.end])
        for s in self._sides_in(chunk.start, chunk.end):
            rest[s.start - chunk.start:s.end - chunk.start] = " " * (s.end - s.start)
        return bool(P.SIDE_HEADER_REST.match("".join(rest).strip(" .。")))

    def _set_sides(self, m: _Mention) -> None:
        m.sentence = self.sentence_of(m.start)
        side = self.side_at(m.start)
        m.unresolved = side is None
        m.explicit = side is not None
        m.sides = _SIDESET[side] if side else _BOTH

    def side_at(self, pos: int) -> str | None:
        chunk = self.chunk_of(pos)
        for a, b, s in chunk.regions:
            if a <= pos < b:
                return s
        return chunk.side

    # ------------------------------------------------------------------ scopes
    def _mentions_in(self, a: int, b: int, kinds=None) -> list:
        starts = [m.start for m in self.mentions] if self._starts is None else self._starts
        self._starts = starts
        window = self.mentions[bisect.bisect_left(starts, a):bisect.bisect_left(starts, b)]
        out = [m for m in window if kinds is None or m.kind in kinds]
        if kinds is None or "organ" in kinds:
            out += [o for o in self.organs if a <= o.start < b]
            out.sort(key=lambda m: m.start)
        return out

    def _listlike(self, a: int, b: int) -> bool:
        text = self.text
        seg = list(text[a:b])
        cjk = bool(P.CJK.search(text[a:b]))
        for m in self._mentions_in(a, b):
            if cjk and m.kind == "finding" and P.PREDICATIVE_ZH.search(text[m.start:m.end]):
                continue
            seg[m.start - a:m.end - a] = " " * (m.end - m.start)
        for s in self._sides_in(a, b):
            seg[s.start - a:min(s.end, b) - a] = " " * (min(s.end, b) - s.start)
        rest = "".join(seg)
        rest = P.STOP_ZH.sub(" ", P.STOP_EN.sub(" ", rest))
        return not P.WORDS.search(rest)

    def _continues(self, chunk: _Chunk, side: str | None) -> bool:
        if chunk.regions and any(r[2] != side for r in chunk.regions):
            return False
        seg = self.text[chunk.start:chunk.end]
        if P.CJK.search(seg):
            return bool(P.CONTINUE_ZH.match(seg)) or self._listlike(chunk.start, chunk.end)
        return bool(P.CONTINUE_EN.search(seg)) or self._listlike(chunk.start, chunk.end)

    def _limit(self, chunk: _Chunk, after: int) -> int:
        """End of a forward scope that starts at ``after`` inside ``chunk``."""
        end = chunk.end
        for a, b, _ in chunk.regions:
            if after < a < end:
                end = a
        for c in self.cues:
            if c.kind == "term" and after <= c.start < end:
                end = c.start
                break
        return end

    def _forward(self, cue: _Cue) -> list[tuple[int, int]]:
        chunk = self.chunk_of(cue.start)
        end = self._limit(chunk, cue.end)
        spans = [(cue.end, end)]
        if end < chunk.end:
            return spans
        side = self.side_at(cue.start)
        sent = self.sentences[chunk.sentence]
        following = sent.chunks[sent.chunks.index(chunk) + 1:]
        for nxt in following:
            if not self._continues(nxt, side):
                break
            e = self._limit(nxt, nxt.start)
            spans.append((nxt.start, e))
            if e < nxt.end:
                break
        return spans

    def _backward(self, cue: _Cue) -> list[tuple[int, int]]:
        text = self.text
        chunk = self.chunk_of(cue.start)
        sent = self.sentences[chunk.sentence]
        lower = next((a for a, b, _ in chunk.regions if a <= cue.start < b), chunk.start)
        heads = [m for m in self._mentions_in(lower, cue.start, _HEADABLE) if m.end <= cue.start]
        if not heads:
            return []
        last = heads[-1]
        gap = text[last.end:cue.start]
        if len(gap) > 60 or any(c.kind == "term" and last.end <= c.start < cue.start for c in self.cues):
            return []
        chain_start = last.start
        k = len(heads) - 1
        while k > 0:
            prev = heads[k - 1]
            if not self._listlike(prev.end, heads[k].start):
                break
            chain_start = prev.start
            k -= 1
        if k == 0 and self._listlike(lower, chain_start):
            # the chain reached the start of its clause: extend it over list-like clauses before
            # ("Masses, calcifications, or distortion are not seen")
            ci = sent.chunks.index(chunk)
            while ci > 0:
                prev_chunk = sent.chunks[ci - 1]
                found = self._mentions_in(prev_chunk.start, prev_chunk.end, _HEADABLE)
                if not found or not self._listlike(prev_chunk.start, prev_chunk.end):
                    break
                chain_start = found[0].start
                ci -= 1
        return [(chain_start, cue.start)]

    def _scopes(self) -> None:
        self.scopes: list[tuple[_Cue, int, int]] = []
        for cue in self.cues:
            if cue.kind == "normal" and P.NEGATED_NORMAL.match(self.text, cue.start):
                # "未见明显异常密度影及钙化": "nothing abnormal" also negates what it goes on to name
                cue = _Cue(cue.start, cue.end, "neg", "pre")
            if cue.kind not in ("neg", "unc"):
                continue
            if cue.direction == "pre":
                spans = self._forward(cue)
            elif cue.direction == "post":
                spans = self._backward(cue)
            else:
                chunk = self.chunk_of(cue.start)
                after = self._mentions_in(cue.end, self._limit(chunk, cue.end), _HEADABLE)
                spans = self._forward(cue) if after else self._backward(cue)
            for a, b in spans:
                if b > a:
                    self.scopes.append((cue, a, b))

    def _scope_of(self, m) -> _Cue | None:
        best, best_d = None, None
        for cue, a, b in self.scopes:
            if m.start < b and a < m.end:
                d = m.start - cue.end if cue.end <= m.start else abs(cue.start - m.end)
                d = max(d, 0)
                if best is None or d < best_d:
                    best, best_d = cue, d
        return best

    # ------------------------------------------------------------------ statuses
    def _statuses(self) -> None:
        text = self.text
        for m in self.mentions:
            if m.kind in ("finding", "generic", "diagnosis", "sym"):
                cue = self._scope_of(m)
                m.status = "POS" if cue is None else ("NEG" if cue.kind == "neg" else "UNC")
            elif m.kind in ("descriptor", "location"):
                cue = self._scope_of(m)
                m.negated_scope = cue is not None and cue.kind == "neg"
        # "symmetric": asymmetry absent (present when negated), unless an asymmetry is in its chunk
        for m in self.mentions:
            if m.kind == "sym":
                chunk = self.chunk_of(m.start)
                if self._mentions_in(chunk.start, chunk.end, ("finding",)):
                    m.status = "drop"
                else:
                    m.status = "POS" if m.status == "NEG" else "NEG"
        # organs: "skin and nipples are normal", "皮肤、乳头未见异常", "no skin or nipple changes"
        self.organ_findings: list[_Mention] = []
        for o in self.organs:
            chunk = self.chunk_of(o.start)
            normal = any(c.kind == "normal" and o.end <= c.start < chunk.end for c in self.cues)
            if not normal:  # "腋下见小淋巴结影，形态正常": the next chunk, when it names nothing else
                sent = self.sentences[chunk.sentence]
                k = sent.chunks.index(chunk)
                nxt = sent.chunks[k + 1] if k + 1 < len(sent.chunks) else None
                normal = nxt is not None and not self._mentions_in(nxt.start, nxt.end, _HEADABLE) and any(
                    c.kind == "normal" and nxt.start <= c.start < nxt.end for c in self.cues)
            normal = normal or bool(re.search(P.A + r"normal(?:[\s\-]+appearing)?\s+(?:\w+\s+)?$",
                                              text[max(chunk.start, o.start - 30):o.start], re.I))
            if not normal:
                cue = self._scope_of(o)
                normal = cue is not None and cue.kind == "neg" and bool(
                    P.CHANGE_WORDS.search(text[chunk.start:chunk.end]))
            if normal:
                self.organ_findings.append(_Mention(o.start, o.end, "finding", o.ids, sides=o.sides,
                                                    explicit=o.explicit, unresolved=o.unresolved, status="NEG",
                                                    sentence=o.sentence))
        # generic lesions become masses next to a mass shape or margin
        for m in self.mentions:
            if m.kind != "generic":
                continue
            sent = [x for x in self.mentions if x.sentence == m.sentence]
            has_mass = any(x.kind == "finding" and x.ids[0] in ("mass", "nodule") for x in sent)
            described = any(x.kind == "descriptor" and not x.negated_scope
                            and any(_GROUP.get(i) in ("shape", "margin") for i in x.ids) for x in sent)
            m.kind = "finding" if described and not has_mass else "dropped"
        # "a small skin lesion projecting over the inner breast": the location is the lesion's
        lesion_chunks = {id(self.chunk_of(m.start)) for m in self.mentions if m.kind == "dropped"}
        finding_chunks = {id(self.chunk_of(m.start)) for m in self.mentions if m.kind in ("finding", "generic")}
        self.mentions = [m for m in self.mentions if m.kind != "dropped" and m.status != "drop" and not (
            m.kind == "location" and id(self.chunk_of(m.start)) in lesion_chunks - finding_chunks)]
        self._starts = None
        for m in self.mentions:
            if m.kind == "sym":
                m.kind = "finding"
        # positive findings without any side, and "no associated ...": the last side named before them
        for m in self.mentions:
            if m.kind != "finding" or not m.unresolved:
                continue
            chunk = self.chunk_of(m.start)
            if m.status in ("POS", "UNC") or P.ASSOCIATED.search(text[chunk.start:chunk.end]):
                k = bisect.bisect_right(self.side_starts, m.start) - 1
                if k >= 0:
                    m.sides = _SIDESET[self.sides[k].side]
                    m.explicit = True

    # ------------------------------------------------------------------ attachment
    def _attach(self) -> None:
        by_sentence: dict[int, list[_Mention]] = {}
        for m in self.mentions:
            by_sentence.setdefault(m.sentence, []).append(m)
        last_findings: list[_Mention] = []
        last_para_item = None
        for si, sent in enumerate(self.sentences):
            ms = by_sentence.get(si, [])
            findings = [m for m in ms if m.kind == "finding"]
            active = [m for m in findings if m.status in ("POS", "UNC")]
            descs = [m for m in ms if m.kind == "descriptor" and not m.negated_scope]
            locs = [m for m in ms if m.kind == "location" and not m.negated_scope]
            where = (sent.para, sent.item)
            if not findings and (descs or locs) and last_findings and where == last_para_item:
                targets, carry = last_findings, True
            else:
                targets, carry = active, False
            if findings:
                last_findings, last_para_item = active, where
            if not targets:
                continue
            for d in descs:
                best = None
                for f in targets:
                    term = next((i for i in d.ids if i and f.ids[0] in _APPLIES.get(i, ())), None)
                    if term is None or not (f.sides & d.sides or carry):
                        continue
                    if carry:
                        dist = -f.start
                    elif _overlaps(f, d):
                        dist = 0
                    else:
                        dist = f.start - d.end if f.start >= d.end else d.start - f.end + 0.5
                    if best is None or dist < best[0]:
                        best = (dist, f, term)
                if best is not None and best[2] not in best[1].descriptors:
                    best[1].descriptors.append(best[2])
            groups: list[list[_Mention]] = []
            for loc in locs:
                if groups:
                    prev = groups[-1][-1]
                    between = [f for f in findings if prev.end <= f.start < loc.start]
                    if not between and loc.start - prev.end <= 30:
                        groups[-1].append(loc)
                        continue
                groups.append([loc])
            for group in groups:
                if len(groups) == 1 or carry:
                    chosen = [f for f in targets if carry or f.sides & group[0].sides]
                else:
                    chosen = self._nearest(group, [f for f in targets if f.sides & group[0].sides])
                for f in chosen:
                    for loc in group:
                        if loc.ids[0] not in f.locations:
                            f.locations.append(loc.ids[0])

    def _nearest(self, group: list[_Mention], targets: list[_Mention]) -> list[_Mention]:
        if not targets:
            return []
        a, b = group[0].start, group[-1].end
        before = [f for f in targets if f.end <= a]
        after = [f for f in targets if f.start >= b]
        back = bool(re.search(P.A + r"(?:in|at|within|of|involving)\s+(?:the\s+)?$", self.text[max(0, a - 14):a], re.I))
        cjk = bool(P.CJK.search(self.text[a:b]))
        order = (after, before) if cjk or not back else (before, after)
        for pool in order:
            if pool:
                return [min(pool, key=lambda f: abs(f.start - a))]
        inside = [f for f in targets if _overlaps(f, group[0])]
        return inside[:1]

    # ------------------------------------------------------------------ BI-RADS sides
    def birads_mentions(self) -> list[tuple[_Mention, str]]:
        """(mention, side R/L/B) for each BI-RADS mention: a side word before it in its chunk, else
        right after it in its chunk, else before it in its sentence; else the sides named since the
        previous category (one breast -> that breast, more -> both); else the side header, the
        nearest side word before it, or both breasts."""
        out = []
        prev_end = 0
        for m in (x for x in self.mentions if x.kind == "birads"):
            sent = self.sentences[m.sentence]
            chunk = self.chunk_of(m.start)
            side = None
            for lo, hi, last in ((chunk.start, m.start, True), (m.end, chunk.end, False), (sent.start, m.start, True)):
                found = self._sides_in(lo, hi)
                if found:
                    side = found[-1].side if last else found[0].side
                    break
            if side is None:
                window = {s.side for s in self._sides_in(prev_end, m.start)}
                if window:
                    side = window.pop() if len(window) == 1 else "B"
            if side is None:
                side = sent.header
            if side is None:
                k = bisect.bisect_right(self.side_starts, m.start) - 1
                side = self.sides[k].side if k >= 0 else "B"
            out.append((m, side))
            prev_end = m.end
        return out


def _birads_value(m: re.Match) -> str:
    g = m.groupdict()
    digit = g.get("d") or g.get("cd") or g.get("zd")
    sub = g.get("s1") or g.get("s2") or g.get("cs") or g.get("zs") or ""
    roman = g.get("r") or g.get("zr")
    if roman:
        roman = re.sub(r"\s+", "", roman.lower())
        sub = roman[2:] if roman.startswith("iv") else ""
        digit = P.ROMAN[roman[:2] if roman.startswith("iv") else roman]
    value = (digit or "") + sub.upper()
    if value == "4":
        value = "4A"  # category 4 without a subcategory: its floor, 4A (docs/report-parser.md)
    return value


# ---------------------------------------------------------------------------------------------- report


def parse_report(text: str, language: str | None = None) -> ReportResult:
    """Parse one free-text mammography report (English, Chinese or mixed) into a ReportResult.

    ``language`` ("en" / "zh") is only recorded in the result; when None it is detected (any CJK
    character -> "zh"). Both languages' patterns always run, so mixed text parses either way.
    """
    text = text or ""
    findings_text, impression_text = split_sections(text)
    result = ReportResult(findings_text=findings_text, impression_text=impression_text,
                          language=language or detect_language(text))
    sections = [_Section(findings_text, "findings")]
    if impression_text:
        sections.append(_Section(impression_text, "impression"))

    relations: list[tuple[str, str, str]] = []
    statuses: dict[tuple[str, str], str] = {}
    for sec in sections:
        for m in sec.mentions + sec.organ_findings:
            if m.kind != "finding" or m.ids[0] not in _FINDING_SET:
                continue
            kind = m.ids[0]
            for side in sorted(m.sides):
                fr = result.breasts[side].findings[kind]
                if _STATUS_RANK[m.status] > _STATUS_RANK[fr.status]:
                    fr.status = m.status
                if m.status in ("POS", "UNC"):
                    fr.locations += [x for x in m.locations if x not in fr.locations]
                    fr.descriptors += [x for x in m.descriptors if x not in fr.descriptors]
                statuses[(side, kind)] = fr.status
            if m.status == "POS":
                relations += [(kind, "located_at", x) for x in m.locations]
                relations += [(kind, "modified_by", x) for x in m.descriptors]

    # density: unilateral statements before bilateral ones, the first of each kind wins
    density: dict[str, list[tuple[int, int, str]]] = {"R": [], "L": []}
    order = 0
    for sec in sections:
        for m in sec.mentions:
            if m.kind == "density":
                for side in m.sides:
                    density[side].append((0 if len(m.sides) == 1 else 1, order, m.ids[0]))
                order += 1
    for side, found in density.items():
        if found:
            result.breasts[side].density = min(found)[2]

    # BI-RADS: the impression when it has any, else every section
    with_birads = [s for s in sections if s.name == "impression" and any(m.kind == "birads" for m in s.mentions)]
    found_birads: dict[str, list[tuple[int, int, str]]] = {"R": [], "L": []}
    birads_sides: dict[int, frozenset] = {}
    for sec in with_birads or sections:
        for m, side in sec.birads_mentions():
            birads_sides[id(m)] = _SIDESET[side]
            for s in _SIDESET[side]:
                found_birads[s].append((0 if side != "B" else 1, -_BIRADS_RANK[m.ids[0]], m.ids[0]))
    for side, found in found_birads.items():
        if found:
            result.breasts[side].birads = min(found)[2]

    # suggestive_of: a POS finding and a BI-RADS / diagnosis in the same impression item or line
    for sec in sections:
        if sec.name != "impression":
            continue
        for a, b in _impression_items(sec):
            ms = [m for m in sec.mentions if a <= m.start < b]
            heads = [m for m in ms if m.kind == "finding" and m.status == "POS" and m.ids[0] in _FINDING_SET]
            tails = []
            for m in ms:
                if m.kind == "birads":
                    tails.append((lexicon.birads_term(m.ids[0]), birads_sides.get(id(m), m.sides)))
                elif m.kind == "diagnosis" and m.status in ("POS", "UNC"):
                    tails.append((m.ids[0], m.sides))
            for h in heads:
                relations += [(h.ids[0], "suggestive_of", t) for t, sides in tails if sides & h.sides]

    positive = {kind for (side, kind), st in statuses.items() if st == "POS"}
    seen: set = set()
    for triple in relations:
        if triple[0] in positive and triple not in seen and lexicon.relation_allowed(*triple):
            seen.add(triple)
            result.relations.append(triple)
    return result


def _impression_items(sec: _Section) -> list[tuple[int, int]]:
    text = sec.text
    if sec.items:
        starts = sorted(set([0] + sec.items))
        return [(a, b) for a, b in zip(starts, starts[1:] + [len(text)])]
    out, start = [], 0
    for m in re.finditer(r"\n", text):
        out.append((start, m.start()))
        start = m.end()
    out.append((start, len(text)))
    return out

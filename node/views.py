"""Which breast and which mammographic view an image shows.

Vendors disagree on where they put this: ImageLaterality (the MG IOD's own, type 1),
series-level Laterality, FrameLaterality in enhanced objects; the view as a SNOMED CT code
in ViewCodeSequence (sometimes with legacy SRT "R-1...." codes), with modifiers either inside
that sequence (standard) or beside it (older objects), or only the free-text ViewPosition.
We read all of them in a fixed order and record which attribute decided, so `studies show`
can explain every choice.

Only a standard CC or MLO view without modifiers (no spot compression, magnification,
implant displacement, rolling ...) can fill one of the four screening positions, and only when
the attributes agree on the breast: an image whose ImageLaterality, series Laterality,
FrameLaterality or a side prefix in ViewPosition ("RMLO") name different breasts is recorded with
the conflict and serves no position (``assembly.view_conflicts``: ``extra`` keeps it as an extra,
``refuse`` refuses it at receive). A ViewPosition that names another view than the view code is
only noted: the code is the standard attribute and wins.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

POSITIONS = ("R-CC", "R-MLO", "L-CC", "L-MLO")

FOR_PRESENTATION_SOP = "1.2.840.10008.5.1.4.1.1.1.2"
FOR_PROCESSING_SOP = "1.2.840.10008.5.1.4.1.1.1.2.1"

# CID 4014 "View for Mammography": SNOMED CT and the legacy SRT codes of older objects.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399099002": "LMO", "R-10230": "LMO",
    "399192008": "XCCL", "R-1024A": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM",
    "399265009": "XCC",
    "399196006": "FB", "R-10244": "FB",
    "399188001": "SIO", "R-10232": "SIO",
    "441555000": "ISO",
    "399011000": "AT", "R-10250": "AT",
    "399161006": "CV", "R-1024C": "CV",
    "399110001": "TAN",
}

# CID 4015 "View Modifier for Mammography".
MODIFIER_CODES: dict[str, str] = {
    "399055006": "spot_compression", "R-102D6": "spot_compression",
    "399163009": "magnification", "R-10233": "magnification",
    "399209000": "implant_displaced", "R-102D2": "implant_displaced",
    "399197002": "rolled_lateral", "R-102D4": "rolled_lateral",
    "399226006": "rolled_medial", "R-102D5": "rolled_medial",
    "414493004": "rolled_inferior",
    "415670009": "rolled_superior",
    "399110001": "tangential", "R-102C2": "tangential",
    "442581004": "nipple_in_profile",
    "441752004": "anterior_compression",
    "442593008": "infra_mammary_fold",
    "399011000": "axillary_tail",
    "399161006": "cleavage",
}

# ViewPosition (0018,5101) free text as vendors write it.
VIEW_POSITION_TERMS = {
    "CC": "CC", "MLO": "MLO", "ML": "ML", "LM": "LM", "LMO": "LMO", "XCCL": "XCCL", "XCCM": "XCCM",
    "XCC": "XCC", "FB": "FB", "SIO": "SIO", "ISO": "ISO", "AT": "AT", "CV": "CV", "TAN": "TAN",
}

STANDARD_VIEWS = {"CC", "MLO"}


@dataclass(frozen=True)
class ViewInfo:
    """What an image shows, and where we read it from."""

    laterality: str | None  # "R", "L", "B" or None when no attribute says
    view: str | None  # "CC", "MLO", "XCCL", ... or None
    modifiers: tuple[str, ...] = ()
    laterality_source: str | None = None
    view_source: str | None = None
    for_presentation: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    conflicts: tuple[str, ...] = field(default_factory=tuple)

    @property
    def position(self) -> str | None:
        """"R-CC" etc. when this image can serve a four-view position, else None."""
        if self.conflicts:
            return None
        if self.laterality in ("R", "L") and self.view in STANDARD_VIEWS and not self.modifiers:
            return f"{self.laterality}-{self.view}"
        return None

    @property
    def label(self) -> str:
        """A human-readable name, e.g. "L-CC spot_compression" or "unknown view"."""
        side = self.laterality or "?"
        view = self.view or "?"
        text = f"{side}-{view}"
        if self.modifiers:
            text += " " + "+".join(self.modifiers)
        return text

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["modifiers"] = list(self.modifiers)
        data["notes"] = list(self.notes)
        data["conflicts"] = list(self.conflicts)
        data["position"] = self.position
        return data


def _items(value: Any) -> list[Dataset]:
    """The items of a sequence attribute; anything else (a sequence sent as LO, say) has none."""
    if isinstance(value, Sequence):
        return [item for item in value if isinstance(item, Dataset)]
    return []


def _code_value(item: Dataset) -> str | None:
    for keyword in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        value = item.get(keyword)
        if value:
            return str(value).strip()
    return None


def _first_frame_laterality(ds: Dataset) -> str | None:
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in _items(ds.get(seq_name)):
            for frame_anatomy in _items(group.get("FrameAnatomySequence")):
                value = frame_anatomy.get("FrameLaterality")
                if value:
                    return str(value).strip().upper()
    return None


def _lateralities(ds: Dataset) -> list[tuple[str, str]]:
    """Every side the attributes name, in order of precedence: (value, attribute)."""
    found = []
    for keyword in ("ImageLaterality", "Laterality"):
        value = ds.get(keyword)
        if value and str(value).strip().upper() in ("R", "L", "B"):
            found.append((str(value).strip().upper(), keyword))
    value = _first_frame_laterality(ds)
    if value in ("R", "L", "B"):
        found.append((value, "FrameLaterality"))
    return found


def _modifiers(items: Any) -> list[str]:
    found = []
    for item in _items(items):
        code = _code_value(item)
        if code in MODIFIER_CODES:
            found.append(MODIFIER_CODES[code])
        elif code:
            found.append(f"code:{code}")
    return found


def _is_for_presentation(ds: Dataset) -> bool:
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    if intent:
        return intent == "FOR PRESENTATION"
    return str(ds.get("SOPClassUID", "")) != FOR_PROCESSING_SOP


def identify_view(ds: Dataset) -> ViewInfo:
    """Read laterality, view and view modifiers from an image's header."""
    notes: list[str] = []
    conflicts: list[str] = []
    sides = _lateralities(ds)
    laterality, laterality_source = sides[0] if sides else (None, None)
    for value, keyword in sides[1:]:
        if value != laterality:
            conflicts.append(f"{keyword} {value} disagrees with {laterality_source} {laterality}")

    view = view_source = None
    modifiers: list[str] = []
    view_items = _items(ds.get("ViewCodeSequence"))
    if ds.get("ViewCodeSequence") is not None and not isinstance(ds.get("ViewCodeSequence"), Sequence):
        notes.append("ViewCodeSequence is not a sequence; ignored")
    if view_items:
        item = view_items[0]
        code = _code_value(item)
        if code in VIEW_CODES:
            view, view_source = VIEW_CODES[code], "ViewCodeSequence"
        elif code:
            notes.append(f"unrecognised view code {code}")
        modifiers += _modifiers(item.get("ViewModifierCodeSequence"))
    # Older objects put the modifiers beside the view code sequence.
    modifiers += _modifiers(ds.get("ViewModifierCodeSequence"))

    position_text = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view is None and position_text:
        term = position_text
        # Some vendors write "RCC" / "LMLO": split a leading side off when it leaves a known view.
        if term not in VIEW_POSITION_TERMS and term[:1] in ("R", "L") and term[1:] in VIEW_POSITION_TERMS:
            if laterality is None:
                laterality, laterality_source = term[0], "ViewPosition"
            elif term[0] != laterality:
                conflicts.append(f"ViewPosition {position_text!r} disagrees with {laterality_source} {laterality}")
            term = term[1:]
        if term in VIEW_POSITION_TERMS:
            view, view_source = VIEW_POSITION_TERMS[term], "ViewPosition"
        else:
            notes.append(f"unrecognised ViewPosition {position_text!r}")
    elif view is not None and position_text:
        term, side = position_text, None
        if term not in VIEW_POSITION_TERMS and term[:1] in ("R", "L") and term[1:] in VIEW_POSITION_TERMS:
            side, term = term[0], term[1:]
        if VIEW_POSITION_TERMS.get(term, view) != view:  # the code is the standard attribute
            notes.append(f"ViewPosition {position_text!r} disagrees with ViewCodeSequence; code used")
        if side is not None and laterality is not None and side != laterality:
            conflicts.append(f"ViewPosition {position_text!r} disagrees with {laterality_source} {laterality}")

    if laterality is None:
        notes.append("no laterality attribute")
    if view is None:
        notes.append("no view attribute")
    return ViewInfo(
        laterality=laterality,
        view=view,
        modifiers=tuple(dict.fromkeys(modifiers)),
        laterality_source=laterality_source,
        view_source=view_source,
        for_presentation=_is_for_presentation(ds),
        notes=tuple(notes + conflicts),
        conflicts=tuple(conflicts),
    )

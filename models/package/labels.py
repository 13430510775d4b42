"""The label spaces of VersaMammo's heads, shared by training, export and the node.

BI-RADS head: 6 classes, categories 0-5 as the official stage-2 code trains them (4A/4B/4C are
merged into 4; category 6, known cancer, is not a screening prediction and is dropped).
Density head: ACR breast composition A-D. Findings head: the 10 VinDr-Mammo finding
categories (multi-label), the set the official multi-label benchmark uses.
"""
from __future__ import annotations

BIRADS_CLASSES: tuple[str, ...] = ("0", "1", "2", "3", "4", "5")
DENSITY_CLASSES: tuple[str, ...] = ("A", "B", "C", "D")
FINDING_CLASSES: tuple[str, ...] = (
    "Mass",
    "Global Asymmetry",
    "Architectural Distortion",
    "Nipple Retraction",
    "Suspicious Calcification",
    "Focal Asymmetry",
    "Asymmetry",
    "Suspicious Lymph Node",
    "Skin Thickening",
    "Skin Retraction",
)


def birads_index(value: str | int | None) -> int | None:
    """Class index for a BI-RADS category ("4B" -> 4, "6" -> None, "BI-RADS 3" -> 3)."""
    if value is None:
        return None
    text = str(value).strip().upper().replace("BI-RADS", "").replace("BIRADS", "").strip()
    if not text:
        return None
    head = text[0]
    if head.isdigit() and head in "012345":
        return int(head)
    return None


def density_index(value: str | int | None) -> int | None:
    """Class index for a density label ("C" -> 2, "DENSITY C" -> 2, 3 -> 2 for ACR 1-4)."""
    if value is None:
        return None
    text = str(value).strip().upper().replace("DENSITY", "").strip()
    if text in DENSITY_CLASSES:
        return DENSITY_CLASSES.index(text)
    if text in ("1", "2", "3", "4"):
        return int(text) - 1
    return None


def finding_index(name: str) -> int | None:
    """Class index for a VinDr-Mammo finding name, case-insensitive."""
    lookup = {n.lower(): i for i, n in enumerate(FINDING_CLASSES)}
    return lookup.get(name.strip().lower())

"""Choose the one image that serves each of the four screening positions.

A study may hold several candidates for one position (a retake, a For Processing twin, a
derived image). The choice must be deterministic, so that a restart or a resend never picks
differently, and explained, so an administrator can see why. Preference, first rule first:

1. For Presentation over For Processing (models are trained on presentation images);
2. ORIGINAL/PRIMARY over derived or secondary images;
3. the latest acquisition (a retake replaces the image it retakes);
4. the highest InstanceNumber, then the greatest SOP Instance UID (a stable tie-break).

Instances flagged as a different-content duplicate of an earlier SOP Instance UID do not
take part: the first version received stays authoritative. For Processing images serve no
position unless the site accepts them (``assembly.accept_for_processing``): the models are
trained on For Presentation images, so a position that only a For Processing image fills is
missing, and the result says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from node.views import POSITIONS


@dataclass(frozen=True)
class Candidate:
    """The facts about one stored instance that the choice looks at."""

    instance_id: int
    sop_instance_uid: str
    position: str | None
    label: str
    for_presentation: bool
    primary: bool
    acquired: str
    instance_number: int
    duplicate: bool
    conflicts: tuple[str, ...] = ()


def candidate_from_view(instance_id: int, sop_instance_uid: str, view: dict[str, Any], duplicate: bool) -> Candidate:
    """Build a :class:`Candidate` from the view JSON the journal keeps per instance."""
    return Candidate(
        instance_id=instance_id,
        sop_instance_uid=sop_instance_uid,
        position=view.get("position"),
        label=view.get("label", "?"),
        for_presentation=bool(view.get("for_presentation", True)),
        primary=bool(view.get("primary", True)),
        acquired=str(view.get("acquired", "")),
        instance_number=int(view.get("instance_number") or 0),
        duplicate=duplicate,
        conflicts=tuple(view.get("conflicts") or ()),
    )


def _rank(c: Candidate) -> tuple[Any, ...]:
    return (c.for_presentation, c.primary, c.acquired, c.instance_number, c.sop_instance_uid)


def _why(chosen: Candidate, others: list[Candidate]) -> str:
    if not others:
        return "only candidate"
    reasons = []
    for other in others:
        if chosen.for_presentation and not other.for_presentation:
            reasons.append("For Presentation preferred over For Processing")
        elif chosen.primary and not other.primary:
            reasons.append("ORIGINAL/PRIMARY preferred over derived")
        elif chosen.acquired > other.acquired:
            reasons.append("latest acquisition (retake)")
        elif chosen.instance_number > other.instance_number:
            reasons.append("highest InstanceNumber")
        else:
            reasons.append("greatest SOP Instance UID (tie-break)")
    unique = list(dict.fromkeys(reasons))
    return f"chosen among {len(others) + 1} candidates: " + "; ".join(unique)


FOR_PROCESSING_WHY = ("For Processing image: the models are trained on For Presentation images "
                      "(assembly.accept_for_processing = false)")


def serves_a_position(for_presentation: bool, accept_for_processing: bool) -> bool:
    """May an image of this kind fill a screening position? (the one rule, also for completeness)"""
    return for_presentation or accept_for_processing


def select_views(candidates: Iterable[Candidate], accept_for_processing: bool = False) -> dict[str, Any]:
    """Return ``{"positions": {pos: {...}}, "missing": [...], "extras": [...]}``.

    ``positions`` maps each filled position to the chosen instance with the reason and the
    instances it was preferred over; ``extras`` lists images that serve no position, and
    ``missing_why`` says, per missing position, why the images there did not count.
    """
    by_position: dict[str, list[Candidate]] = {p: [] for p in POSITIONS}
    extras: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    for c in candidates:
        if c.duplicate:
            extras.append({"instance_id": c.instance_id, "sop_instance_uid": c.sop_instance_uid,
                           "label": c.label, "why": "different-content duplicate of an earlier instance"})
        elif c.position in by_position and not serves_a_position(c.for_presentation, accept_for_processing):
            extras.append({"instance_id": c.instance_id, "sop_instance_uid": c.sop_instance_uid,
                           "label": c.label, "why": FOR_PROCESSING_WHY})
            refused[c.position] = FOR_PROCESSING_WHY
        elif c.position in by_position:
            by_position[c.position].append(c)
        elif c.conflicts:
            extras.append({"instance_id": c.instance_id, "sop_instance_uid": c.sop_instance_uid,
                           "label": c.label, "why": "conflicting view attributes: " + "; ".join(c.conflicts)})
        else:
            extras.append({"instance_id": c.instance_id, "sop_instance_uid": c.sop_instance_uid,
                           "label": c.label, "why": "not a standard CC/MLO view"})
    positions: dict[str, Any] = {}
    for position, group in by_position.items():
        if not group:
            continue
        ordered = sorted(group, key=_rank, reverse=True)
        chosen, others = ordered[0], ordered[1:]
        positions[position] = {
            "instance_id": chosen.instance_id,
            "sop_instance_uid": chosen.sop_instance_uid,
            "why": _why(chosen, others),
            "over": [o.sop_instance_uid for o in others],
        }
        for other in others:
            extras.append({"instance_id": other.instance_id, "sop_instance_uid": other.sop_instance_uid,
                           "label": other.label, "why": f"another candidate was chosen for {position}"})
    missing = [p for p in POSITIONS if p not in positions]
    out: dict[str, Any] = {"positions": positions, "missing": missing, "extras": extras}
    missing_why = {p: refused[p] for p in missing if p in refused}
    if missing_why:
        out["missing_why"] = missing_why
    return out

"""Choosing one instance per position: deterministic and explained."""
from __future__ import annotations

import itertools

from node.selection import Candidate, select_views


def _c(i: int, position: str | None, **kw) -> Candidate:
    values = dict(instance_id=i, sop_instance_uid=f"1.2.{i}", position=position, label=position or "R-XCCL",
                  for_presentation=True, primary=True, acquired="20260101120000", instance_number=i,
                  duplicate=False)
    values.update(kw)
    return Candidate(**values)


def test_for_presentation_beats_for_processing_and_retake_wins() -> None:
    candidates = [
        _c(1, "R-CC", for_presentation=False, acquired="20260101130000"),
        _c(2, "R-CC"),
        _c(3, "L-CC", acquired="20260101120000"),
        _c(4, "L-CC", acquired="20260101121500"),  # the retake
        _c(5, "R-MLO", primary=False),
        _c(6, "R-MLO"),
        _c(7, None),
    ]
    result = select_views(candidates, accept_for_processing=True)
    assert result["positions"]["R-CC"]["instance_id"] == 2
    assert "For Presentation" in result["positions"]["R-CC"]["why"]
    assert result["positions"]["L-CC"]["instance_id"] == 4
    assert "retake" in result["positions"]["L-CC"]["why"]
    assert result["positions"]["R-MLO"]["instance_id"] == 6
    assert result["missing"] == ["L-MLO"]
    assert {e["instance_id"] for e in result["extras"]} == {1, 3, 5, 7}


def test_choice_does_not_depend_on_arrival_order() -> None:
    candidates = [_c(i, "L-MLO", instance_number=1) for i in range(1, 5)]
    chosen = {select_views(p)["positions"]["L-MLO"]["sop_instance_uid"] for p in itertools.permutations(candidates)}
    assert chosen == {"1.2.4"}


def test_different_content_duplicates_never_serve() -> None:
    result = select_views([_c(1, "R-CC"), _c(2, "R-CC", duplicate=True, acquired="20990101")])
    assert result["positions"]["R-CC"]["instance_id"] == 1
    assert result["extras"][0]["instance_id"] == 2
    assert "duplicate" in result["extras"][0]["why"]


def test_conflicting_view_attributes_are_an_extra_with_the_reason() -> None:
    conflicted = _c(9, None, conflicts=("ViewPosition 'RMLO' disagrees with ImageLaterality L",))
    result = select_views([_c(1, "L-CC"), conflicted])
    assert result["positions"]["L-CC"]["instance_id"] == 1
    assert result["extras"][0]["instance_id"] == 9
    assert result["extras"][0]["why"].startswith("conflicting view attributes: ViewPosition 'RMLO'")


def test_a_position_only_a_for_processing_image_fills_is_missing_with_its_reason() -> None:
    """Models are trained on For Presentation images: a For Processing image fills no position
    unless the site accepts them (assembly.accept_for_processing)."""
    candidates = [_c(1, "R-CC", for_presentation=False), _c(2, "R-MLO"), _c(3, "L-CC"), _c(4, "L-MLO")]
    refused = select_views(candidates)
    assert refused["missing"] == ["R-CC"] and "R-CC" not in refused["positions"]
    assert "For Processing" in refused["missing_why"]["R-CC"]
    assert [e["instance_id"] for e in refused["extras"]] == [1]
    accepted = select_views(candidates, accept_for_processing=True)
    assert accepted["missing"] == [] and accepted["positions"]["R-CC"]["instance_id"] == 1
    assert "missing_why" not in accepted

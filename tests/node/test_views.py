"""View identification across the ways vendors encode laterality and view."""
from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.views import FOR_PROCESSING_SOP, identify_view


def _code(value: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, "x"
    return item


def _image(**attrs) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_standard_attributes() -> None:
    info = identify_view(_image(ImageLaterality="L", ViewCodeSequence=Sequence([_code("399368009")])))
    assert info.position == "L-MLO"
    assert (info.laterality_source, info.view_source) == ("ImageLaterality", "ViewCodeSequence")


def test_series_laterality_and_view_position_fallbacks() -> None:
    info = identify_view(_image(Laterality="R", ViewPosition="CC"))
    assert info.position == "R-CC"
    assert (info.laterality_source, info.view_source) == ("Laterality", "ViewPosition")


def test_view_position_with_side_prefix() -> None:
    assert identify_view(_image(ViewPosition="LMLO")).position == "L-MLO"


def test_frame_laterality_in_functional_groups() -> None:
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    group = Dataset()
    group.FrameAnatomySequence = Sequence([anatomy])
    info = identify_view(_image(SharedFunctionalGroupsSequence=Sequence([group]),
                                ViewCodeSequence=Sequence([_code("399162004")])))
    assert info.position == "R-CC" and info.laterality_source == "FrameLaterality"


def test_legacy_srt_codes() -> None:
    assert identify_view(_image(ImageLaterality="R", ViewCodeSequence=Sequence([_code("R-10242", "SRT")]))
                         ).position == "R-CC"


def test_modifiers_exclude_from_four_view_set() -> None:
    view = _code("399162004")
    view.ViewModifierCodeSequence = Sequence([_code("399055006")])
    info = identify_view(_image(ImageLaterality="R", ViewCodeSequence=Sequence([view])))
    assert info.view == "CC" and info.modifiers == ("spot_compression",)
    assert info.position is None
    assert info.label == "R-CC spot_compression"
    # Older objects: modifier sequence beside the view code sequence.
    older = identify_view(_image(ImageLaterality="L", ViewCodeSequence=Sequence([_code("399162004")]),
                                 ViewModifierCodeSequence=Sequence([_code("399163009")])))
    assert older.modifiers == ("magnification",) and older.position is None


def test_other_mammography_views_are_not_positions() -> None:
    for code, name in [("399192008", "XCCL"), ("399260004", "ML"), ("399352003", "LM"), ("399011000", "AT")]:
        info = identify_view(_image(ImageLaterality="L", ViewCodeSequence=Sequence([_code(code)])))
        assert info.view == name and info.position is None


def test_code_wins_over_disagreeing_view_position_and_is_noted() -> None:
    info = identify_view(_image(ImageLaterality="L", ViewPosition="MLO",
                                ViewCodeSequence=Sequence([_code("399162004")])))
    assert info.position == "L-CC"
    assert any("disagrees" in n for n in info.notes)


def test_missing_information_is_explained() -> None:
    info = identify_view(_image())
    assert info.position is None
    assert "no laterality attribute" in info.notes and "no view attribute" in info.notes


def test_for_processing_detection() -> None:
    assert identify_view(_image(PresentationIntentType="FOR PROCESSING")).for_presentation is False
    ds = _image()
    ds.SOPClassUID = FOR_PROCESSING_SOP
    assert identify_view(ds).for_presentation is False
    assert identify_view(_image(PresentationIntentType="FOR PRESENTATION")).for_presentation is True


def test_sides_that_disagree_are_a_conflict_and_fill_no_position() -> None:
    # Issue 17: ImageLaterality L, view code CC, ViewPosition "RMLO" used to become L-CC silently.
    info = identify_view(_image(ImageLaterality="L", ViewPosition="RMLO",
                                ViewCodeSequence=Sequence([_code("399162004")])))
    assert info.position is None
    assert any("'RMLO' disagrees with ImageLaterality L" in c for c in info.conflicts)
    assert set(info.conflicts) <= set(info.notes)
    assert info.to_json()["conflicts"] == list(info.conflicts)
    series = identify_view(_image(ImageLaterality="L", Laterality="R", ViewPosition="CC"))
    assert series.position is None and "Laterality R disagrees with ImageLaterality L" in series.conflicts[0]
    prefix_only = identify_view(_image(ImageLaterality="R", ViewPosition="LCC"))
    assert prefix_only.position is None and prefix_only.conflicts
    assert identify_view(_image(ImageLaterality="R", Laterality="R", ViewPosition="RCC")).position == "R-CC"


def test_a_view_code_sequence_that_is_not_a_sequence_does_not_break_identification() -> None:
    ds = _image(ImageLaterality="L", ViewPosition="MLO")
    ds.add_new(0x00540220, "LO", "399162004")  # ViewCodeSequence sent as LO
    info = identify_view(ds)
    assert info.position == "L-MLO" and info.view_source == "ViewPosition"
    assert any("not a sequence" in n for n in info.notes)

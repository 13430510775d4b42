"""The result as a Mammography CAD SR (SOP class 1.2.840.10008.5.1.4.1.1.88.50, TID 4000).

Mammography workstations show CAD results from this SOP class, not from a TID 1500 report.
highdicom has no TID 4000 builder and its reader refuses the SOP class, so the tree is built from
highdicom's content items following PS3.16 TID 4000-4023, and the SR modules of PS3.3 A.35.5
are set on a plain pydicom Dataset. docs/sr-tid4000.md lists the tree with every code.

What TID 4000 cannot hold is said, never invented: a Single Image Finding must have a Center
point on an image (TID 4006 row 8, TID 4021), and the report's findings come from text without
coordinates, so they are written in the Impression Description of their breast. The CAD marks of
a VersaMammo package with a lesion map (node.marks: a region and a centre on a source image, a
kind, a score) are Single Image Findings with their Center and Outline on that image; breast
composition (which needs no geometry) is one too. The CAD Processing and Findings Summary says
"with findings" only when a mark is encoded, and the overall Impression Description says what was
and was not attempted. The document is in the
source study, in its own series, UNVERIFIED, with the preliminary-AI disclaimer; UIDs and dates
come from the result, so building it twice gives the same bytes.
"""
from __future__ import annotations

import re
from copy import deepcopy
from datetime import date, time
from typing import Any, Iterable, Mapping, Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (CodeContentItem, CodedConcept, ContainerContentItem, ContentItem, ContentSequence,
                          DateContentItem, ImageContentItem, NumContentItem, ScoordContentItem, TextContentItem,
                          TimeContentItem)
from highdicom.sr import RelationshipTypeValues as Rel
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from models.report import lexicon
from node.outputs import codes as C
from node.outputs.amend import document_numbers, predecessor_documents
from node.outputs.common import (DEVICE_NAME, DISCLAIMER, MANUFACTURER, SERIES_DESCRIPTION, SOFTWARE_VERSION,
                                 completion, model_label, report_language)
from node.outputs.source import SourceImage, SourceStudy, stamp
from node.outputs.identity import derived_uid, document_identity
from node.study_result import Breast, CadMark, ReportFinding, StudyResult
from node.views import VIEW_CODES as VIEW_NAMES

KIND = "tid4000"
SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.50"  # Mammography CAD SR Storage
MODEL_KINDS = ("versamammo", "mammorg")  # the order algorithms are listed in
NODE_KIND = "node"  # the node itself, named as the algorithm when no model ran
SIDES = {"R": "Right", "L": "Left"}


def _concept(code: Any) -> CodedConcept:
    """pydicom's dictionary code as a CodedConcept; some of its meanings carry zero-width spaces."""
    return CodedConcept(code.value, code.scheme_designator, code.meaning.replace("\u200b", ""))


# Concept names and values of TID 4000-4023 (PS3.16 Annex D, DCM; CIDs named where they apply).
REPORT = _concept(codes.DCM.MammographyCADReport)  # 111036
IMAGE_LIBRARY = _concept(codes.DCM.ImageLibrary)  # 111028
CAD_SUMMARY = _concept(codes.DCM.CADProcessingAndFindingsSummary)  # 111017, value from CID 6047
SUMMARY_OF_DETECTIONS = _concept(codes.DCM.SummaryOfDetections)  # 111064, value from CID 6042
SUMMARY_OF_ANALYSES = _concept(codes.DCM.SummaryOfAnalyses)  # 111065, value from CID 6042
SUCCESSFUL_DETECTIONS = _concept(codes.DCM.SuccessfulDetections)  # 111063
SUCCESSFUL_ANALYSES = _concept(codes.DCM.SuccessfulAnalyses)  # 111062
DETECTION_PERFORMED = _concept(codes.DCM.DetectionPerformed)  # 111022
ANALYSIS_PERFORMED = _concept(codes.DCM.AnalysisPerformed)  # 111004
INDIVIDUAL_IMPRESSION = _concept(codes.DCM.IndividualImpressionRecommendation)  # 111034
INDIVIDUAL_ANALYSIS = _concept(codes.DCM.IndividualImpressionRecommendationAnalysis)  # 111233, CID 6043
RENDERING_INTENT = _concept(codes.DCM.RenderingIntent)  # 111056, value from CID 6034
PRESENTATION_REQUIRED = CodedConcept("111150", "DCM", "Presentation Required: Rendering device is expected to present")
SINGLE_IMAGE_FINDING = _concept(codes.DCM.SingleImageFinding)  # 111059, value from CID 6014
IMPRESSION_DESCRIPTION = _concept(codes.DCM.ImpressionDescription)  # 111033
CERTAINTY_OF_IMPRESSION = _concept(codes.DCM.CertaintyOfImpression)  # 111013
LATERALITY = _concept(codes.SCT.Laterality)  # 272741003, value from CID 6022
BREAST_SIDE = {"R": _concept(codes.SCT.RightBreast), "L": _concept(codes.SCT.LeftBreast)}  # CID 6022
ALGORITHM_NAME = _concept(codes.DCM.AlgorithmName)  # 111001
ALGORITHM_VERSION = _concept(codes.DCM.AlgorithmVersion)  # 111003
ALGORITHM_PARAMETERS = _concept(codes.DCM.AlgorithmParameters)  # 111002
SUCCEEDED = CodedConcept("111222", "DCM", "Succeeded")  # CID 6042
NOT_ATTEMPTED = CodedConcept("111225", "DCM", "Not Attempted")
WITHOUT_FINDINGS = CodedConcept("111241", "DCM", "All algorithms succeeded; without findings")
NONE_SUCCEEDED = CodedConcept("111245", "DCM", "No algorithms succeeded; without findings")
WITH_FINDINGS = CodedConcept("111242", "DCM", "All algorithms succeeded; with findings")
CENTER = CodedConcept("111010", "DCM", "Center")  # TID 4021 row 1
OUTLINE = CodedConcept("111041", "DCM", "Outline")  # TID 4021 row 2
CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")  # TID 4006: the mark's score
PERCENT = _concept(codes.UCUM.Percent)
MILLIMETER = CodedConcept("mm", "UCUM", "millimeter")
LIBRARY_CONTEXT = {  # TID 4020 rows: (concept, header keyword), each present when the image has it
    "StudyDate": CodedConcept("111060", "DCM", "Study Date"), "StudyTime": CodedConcept("111061", "DCM", "Study Time"),
    "ContentDate": CodedConcept("111018", "DCM", "Content Date"),
    "ContentTime": CodedConcept("111019", "DCM", "Content Time"),
}
ORIENTATION_ROW = CodedConcept("111044", "DCM", "Patient Orientation Row")
ORIENTATION_COLUMN = CodedConcept("111043", "DCM", "Patient Orientation Column")
HORIZONTAL_SPACING = CodedConcept("111026", "DCM", "Horizontal Pixel Spacing")
VERTICAL_SPACING = CodedConcept("111066", "DCM", "Vertical Pixel Spacing")
# Placeholder name for IMAGE items while highdicom builds the tree (it indexes items by name); removed
# before the dataset is returned, as TID 4017/4018/4020 give IMAGE references no concept name.
_UNNAMED_IMAGE = CodedConcept("260753009", "SCT", "Source")

_FINDINGS_NOTE = ("(from the generated report text; not localized on the images, "
                  "so not encoded as Single Image Findings)")
_FINDINGS_LINE = re.compile(r"^(Right|Left) breast findings " + re.escape(_FINDINGS_NOTE) + r": (.*?)\.?$")
_SIDE_LINE = re.compile(r"^(Right|Left) breast: ")
_NONE_REPORTED = "none reported"
# What the CAD did and did not do, said in the overall Impression Description of every SR where models ran.
ATTEMPTED = ("CAD processing: breast composition and BI-RADS assessment per breast were attempted and succeeded. "
             "Lesion detection and localization were not attempted: there are no CAD marks. Findings named "
             "below come from the generated report text and are not localized.")
ATTEMPTED_MARKS = ("CAD processing: breast composition and BI-RADS assessment per breast were attempted and "
                   "succeeded. Lesion detection and localization (the classifier's lesion map) were attempted and "
                   "succeeded: {marks} at lesion-map probability >= {threshold}, encoded as Single Image Findings "
                   "with their region on the image; a mark's kind is the classifier's most probable lesion kind "
                   "on that image. Findings named below come from the generated report text and are not "
                   "localized.")


# ---------------------------------------------------------------------------- building blocks
def _code(name: CodedConcept, value: CodedConcept, rel: Rel, children: Sequence[ContentItem] = ()) -> CodeContentItem:
    item = CodeContentItem(name=name, value=value, relationship_type=rel)
    if children:
        item.ContentSequence = ContentSequence(list(children))
    return item


def _container(name: CodedConcept, rel: Rel | None, children: Sequence[ContentItem], *,
               continuous: bool = False, template_id: str | None = None) -> ContainerContentItem:
    item = ContainerContentItem(name=name, is_content_continuous=continuous, template_id=template_id,
                                relationship_type=rel)
    item.ContentSequence = ContentSequence(list(children))
    return item


def _image(image: SourceImage, rel: Rel, children: Sequence[ContentItem] = ()) -> ImageContentItem:
    item = ImageContentItem(name=_UNNAMED_IMAGE, referenced_sop_class_uid=image.sop_class_uid,
                            referenced_sop_instance_uid=image.sop_instance_uid, relationship_type=rel)
    if children:
        item.ContentSequence = ContentSequence(list(children))
    return item


def _algorithm(versions: Mapping[str, str], kind: str, rel: Rel) -> list[ContentItem]:
    """TID 4019 for one model of the result (the parameter names its role, so a reader can tell the
    classifier from the report generator); the node itself when ``kind`` is NODE_KIND."""
    name, version = (DEVICE_NAME, SOFTWARE_VERSION) if kind == NODE_KIND else model_label(versions, kind)
    return [TextContentItem(ALGORITHM_NAME, name[:64], rel), TextContentItem(ALGORITHM_VERSION, version[:64], rel),
            TextContentItem(ALGORITHM_PARAMETERS, f"kind={kind}", rel)]


def _model_kinds(result: StudyResult) -> list[str]:
    models = result.models
    return [k for k in MODEL_KINDS if k in models] + sorted(k for k in models if k not in MODEL_KINDS)


def _source_kind(source: str | None) -> str | None:
    """Which model a per-breast value came from (node.results: the report, else the classifier)."""
    return {"report": "mammorg", "classifier": "versamammo"}.get(source or "")


def _assessment(side: str, birads: str, rel: Rel) -> CodeContentItem:
    """TID 4002 rows 1-2: BI-RADS (CID 6026 via node.outputs.codes) with the breast as laterality."""
    return _code(C.ASSESSMENT_CATEGORY, C.birads_concept(birads), rel,
                 [_code(LATERALITY, BREAST_SIDE[side], Rel.HAS_CONCEPT_MOD)])


# ---------------------------------------------------------------------------- image library (TID 4020)
def _library_entry(image: SourceImage) -> ImageContentItem:
    header = image.dataset
    acq = Rel.HAS_ACQ_CONTEXT
    # The position is what the node decided the image shows (a standard CC or MLO view of that breast).
    children: list[ContentItem] = [CodeContentItem(C.IMAGE_LATERALITY, BREAST_SIDE[image.laterality], acq),
                                   CodeContentItem(C.IMAGE_VIEW, C.VIEW_CODES[image.view], acq)]
    orientation = header.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2:
        children += [TextContentItem(ORIENTATION_ROW, str(orientation[0]), acq),
                     TextContentItem(ORIENTATION_COLUMN, str(orientation[1]), acq)]
    for keyword, concept in LIBRARY_CONTEXT.items():
        value = header.get(keyword)
        if not value:
            continue
        if keyword.endswith("Date"):
            children.append(DateContentItem(concept, _date(str(value)), acq))
        else:
            children.append(TimeContentItem(concept, _time(str(value)), acq))
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:  # (row spacing, column spacing) in mm
        children += [NumContentItem(HORIZONTAL_SPACING, float(spacing[1]), MILLIMETER, relationship_type=acq),
                     NumContentItem(VERTICAL_SPACING, float(spacing[0]), MILLIMETER, relationship_type=acq)]
    return _image(image, Rel.CONTAINS, children)


def _date(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def _time(value: str) -> time:
    digits = value.split(".")[0].ljust(6, "0")
    return time(int(digits[:2]), int(digits[2:4]), int(digits[4:6]))


# ---------------------------------------------------------------------------- impressions (TID 4001-4007)
def _finding_words(finding: ReportFinding) -> str:
    parts = []
    if finding.status == "UNC":
        parts.append("uncertain")
    for terms in (finding.locations, finding.descriptors):
        names = [_term_name(t) for t in terms]
        if names:
            parts.append(", ".join(names))
    name = _term_name(finding.kind)
    return f"{name} ({'; '.join(parts)})" if parts else name


def _term_name(term_id: str) -> str:
    try:
        return lexicon.get(term_id).name
    except KeyError:
        return term_id.replace("_", " ")


def _findings_line(side: str, breast: Breast) -> str:
    """The breast's findings in words: TID 4006 needs image coordinates we do not have (module doc)."""
    findings = breast.findings
    words = "; ".join(_finding_words(f) for f in findings) if findings else _NONE_REPORTED
    return f"{SIDES[side]} breast findings {_FINDINGS_NOTE}: {words}."


def _breast_text(side: str, breast: Breast, result: StudyResult) -> str:
    origin = {"report": "from the generated report", "classifier": "from the classifier"}
    head = []
    if breast.birads:
        head.append(f"BI-RADS {breast.birads} ({origin.get(breast.birads_source or '', 'source unknown')})")
    if breast.density:
        meaning = C.density_concept(breast.density).meaning
        head.append(f"density {breast.density}: {meaning} "
                    f"({origin.get(breast.density_source or '', 'source unknown')})")
    lines = [f"{SIDES[side]} breast: " + (", ".join(head) if head else "no assessment") + "."]
    lines.append(_findings_line(side, breast))
    if breast.classifier is not None and breast.classifier.findings:
        listed = ", ".join(f"{f.kind} {float(f.score):.2f}" for f in breast.classifier.findings)
        lines.append(f"Classifier findings with probability >= 0.5 (not localized): {listed}.")
    for d in result.disagreements:
        if d.breast == side:
            lines.append(f"The report says {d.field} {d.report}, the classifier {d.classifier}.")
    return "\n".join(lines)


def _overall_text(result: StudyResult, without_individual: Iterable[str]) -> str:
    status = result.status
    missing = ", ".join(result.missing_views)
    lines = [DISCLAIMER]
    if status != "incomplete":
        lines.append(_attempted(result))
    if status == "incomplete":
        lines.append(f"Not processed: views missing ({missing}); no model ran, so there is no AI result.")
    elif missing:
        lines.append(f"Partial result: views missing ({missing}); processed with the views present.")
    report = result.report
    if report is not None and report.findings:
        lines.append("Report findings:\n" + report.findings)
    if report is not None and report.impression:
        lines.append("Report impression:\n" + report.impression)
    for side in without_individual:  # breasts without a composition finding have no TID 4003 of their own
        lines.append(_breast_text(side, result.breasts[side], result))
    return "\n".join(lines)


def _attempted(result: StudyResult) -> str:
    """What the CAD attempted: with a lesion map, the marks and their threshold too."""
    localization = result.localization
    if localization is None or not localization.attempted:
        return ATTEMPTED
    n = len(result.marks or ())
    marks = "no CAD mark" if n == 0 else "1 CAD mark" if n == 1 else f"{n} CAD marks"
    return ATTEMPTED_MARKS.format(marks=marks, threshold=f"{float(localization.mark_threshold):g}")


def _mark_finding(mark: CadMark, image: SourceImage, versions: Mapping[str, str]) -> CodeContentItem:
    """TID 4006 for one CAD mark: its kind (CID 6014), rendering intent, the classifier as algorithm,
    its score as Certainty of Finding, and TID 4021: the Center POINT and the Outline (the region's
    closed rectangle) on the source image, in its pixel coordinates."""
    props = Rel.HAS_PROPERTIES
    x0, y0, x1, y1 = (float(v) for v in mark.box)
    geometry = []
    for name, kind, data in ((CENTER, "POINT", [list(mark.center)]),
                             (OUTLINE, "POLYLINE", [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])):
        item = ScoordContentItem(name, kind, np.asarray(data, dtype=float), relationship_type=props)
        item.ContentSequence = ContentSequence([_image(image, Rel.SELECTED_FROM)])
        geometry.append(item)
    children = [_code(RENDERING_INTENT, PRESENTATION_REQUIRED, Rel.HAS_CONCEPT_MOD),
                *_algorithm(versions, "versamammo", props),
                NumContentItem(CERTAINTY_OF_FINDING, round(100.0 * float(mark.score), 2), PERCENT,
                               relationship_type=props),
                *geometry]
    return _code(SINGLE_IMAGE_FINDING, C.mark_concept(mark.kind), Rel.CONTAINS, children)


def _composition_finding(density: str, source: str | None, versions: Mapping[str, str]) -> CodeContentItem:
    """TID 4006 with value Breast composition: the one Single Image Finding that needs no geometry
    (row 8); TID 4007 carries the ACR category (CID 6000)."""
    props = Rel.HAS_PROPERTIES
    children = [_code(RENDERING_INTENT, PRESENTATION_REQUIRED, Rel.HAS_CONCEPT_MOD),
                *_algorithm(versions, _source_kind(source) or MODEL_KINDS[0], props),
                _code(C.BREAST_COMPOSITION, C.density_concept(density), props)]
    return _code(SINGLE_IMAGE_FINDING, C.BREAST_COMPOSITION, Rel.CONTAINS, children)


def _individual(side: str, breast: Breast, result: StudyResult, source: SourceStudy) -> ContainerContentItem:
    """TID 4003 for one breast: rendering intent, TID 4002 body, the composition finding, the CAD marks."""
    versions = result.models
    body: list[ContentItem] = []
    if breast.birads:
        body.append(_assessment(side, breast.birads, Rel.CONTAINS))
    body.append(TextContentItem(IMPRESSION_DESCRIPTION, _breast_text(side, breast, result), Rel.CONTAINS))
    probabilities = breast.classifier.birads_probabilities if breast.classifier is not None else {}
    if breast.birads_source == "classifier" and breast.birads is not None and breast.birads in probabilities:
        certainty = round(100.0 * float(probabilities[breast.birads]), 2)
        body.append(NumContentItem(CERTAINTY_OF_IMPRESSION, certainty, PERCENT, relationship_type=Rel.CONTAINS))
    used = {_source_kind(breast.birads_source), _source_kind(breast.density_source)}
    kinds = [k for k in _model_kinds(result) if k in used]
    for kind in kinds or _model_kinds(result):
        body += _algorithm(versions, kind, Rel.CONTAINS)
    children = [_code(RENDERING_INTENT, PRESENTATION_REQUIRED, Rel.HAS_CONCEPT_MOD), *body]
    if breast.density:
        children.append(_composition_finding(breast.density, breast.density_source, versions))
    images = {i.position: i for i in source.images}
    children += [_mark_finding(m, images[m.position], versions) for m in result.marks_of_breast(side)
                 if m.position in images]
    return _container(INDIVIDUAL_IMPRESSION, Rel.INFERRED_FROM, children, continuous=True)


def _cad_summary(result: StudyResult, source: SourceStudy) -> CodeContentItem:
    """TID 4001: the processing summary, the overall TID 4002 body (both breasts' BI-RADS, the
    report text and disclaimer, the algorithms) and one TID 4003 per breast with a composition."""
    breasts = result.breasts
    kinds = _model_kinds(result)
    individual = [side for side in SIDES if side in breasts
                  and (breasts[side].density or result.marks_of_breast(side))]
    body: list[ContentItem] = [_assessment(side, birads, Rel.HAS_PROPERTIES)
                               for side in SIDES if side in breasts and (birads := breasts[side].birads)]
    body.append(TextContentItem(IMPRESSION_DESCRIPTION,
                                _overall_text(result, [s for s in SIDES if s in breasts and s not in individual]),
                                Rel.HAS_PROPERTIES))
    for kind in kinds or [NODE_KIND]:
        body += _algorithm(result.models, kind, Rel.HAS_PROPERTIES)
    children = body + [_individual(side, breasts[side], result, source) for side in individual]
    # CID 6047 "with findings" makes a workstation look for CAD marks (Single Image Findings and
    # Composite Features with a location): said only when a mark is encoded; what was and was not
    # attempted is said in the overall Impression Description.
    value = (WITH_FINDINGS if result.marks else WITHOUT_FINDINGS) if kinds else NONE_SUCCEEDED
    return _code(CAD_SUMMARY, value, Rel.CONTAINS, children)


# ---------------------------------------------------------------------------- summaries (TID 4015-4018)
def _performed(name: CodedConcept, value: CodedConcept, kind: str, result: StudyResult,
               source: SourceStudy) -> CodeContentItem:
    """TID 4017/4018: what one model did, on which images (by value, row 3)."""
    props = Rel.HAS_PROPERTIES
    children = [*_algorithm(result.models, kind, props), *(_image(i, props) for i in source.images)]
    return _code(name, value, Rel.CONTAINS, children)


def _summaries(result: StudyResult, source: SourceStudy) -> list[CodeContentItem]:
    """Summary of Detections / Analyses: every model that ran detected breast composition (CID 6014)
    and made the per-breast impressions (CID 6043); nothing is attempted when no model ran."""
    kinds = _model_kinds(result)
    if not kinds:
        return [_code(SUMMARY_OF_DETECTIONS, NOT_ATTEMPTED, Rel.CONTAINS),
                _code(SUMMARY_OF_ANALYSES, NOT_ATTEMPTED, Rel.CONTAINS)]
    performed = [_performed(DETECTION_PERFORMED, C.BREAST_COMPOSITION, k, result, source) for k in kinds]
    if result.localization_attempted and "versamammo" in kinds:  # the lesion map
        performed += [_performed(DETECTION_PERFORMED, C.mark_concept(kind), "versamammo", result, source)
                      for kind in C.MARK_TERMS]
    detections = _container(SUCCESSFUL_DETECTIONS, Rel.INFERRED_FROM, performed)
    analyses = _container(SUCCESSFUL_ANALYSES, Rel.INFERRED_FROM, [
        _performed(ANALYSIS_PERFORMED, INDIVIDUAL_ANALYSIS, k, result, source) for k in kinds])
    return [_code(SUMMARY_OF_DETECTIONS, SUCCEEDED, Rel.CONTAINS, [detections]),
            _code(SUMMARY_OF_ANALYSES, SUCCEEDED, Rel.CONTAINS, [analyses])]


def _content_root(source: SourceStudy, result: StudyResult) -> ContainerContentItem:
    library = _container(IMAGE_LIBRARY, Rel.CONTAINS, [_library_entry(i) for i in source.images])
    tag, meaning = report_language(result)
    language = hd.sr.LanguageOfContentItemAndDescendants(CodedConcept(tag, "RFC5646", meaning))
    children = [*language, library, _cad_summary(result, source),
                *_summaries(result, source)]
    return _container(REPORT, None, children, template_id="4000")


def _plain(item: Dataset) -> Dataset:
    """A plain pydicom copy of a highdicom item, without the placeholder name of IMAGE references."""
    out = Dataset()
    for elem in item:
        if elem.keyword == "ContentSequence":
            out.ContentSequence = [_plain(child) for child in elem.value]
        elif elem.keyword == "ConceptNameCodeSequence" and item.get("ValueType") == "IMAGE":
            continue
        else:
            out.add(deepcopy(elem))
    return out


# ---------------------------------------------------------------------------- the document
def _evidence(source: SourceStudy) -> list[Dataset]:
    return source.evidence()


def _procedure_codes(source: SourceStudy) -> list[Dataset]:
    seq = source.header.get("ProcedureCodeSequence")
    if seq:
        return [deepcopy(item) for item in seq]
    item = Dataset()
    code = C.PROCEDURE_MAMMOGRAPHY
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return [item]


def _author(source: SourceStudy, result: StudyResult, device_uid: str) -> Dataset:
    """The device observer of the whole document (SR Document General, Author Observer Sequence):
    TID 4000 has no observation-context rows, so who made it is said in the header."""
    item = Dataset()
    item.ObserverType = "DEV"
    item.DeviceUID = device_uid
    item.StationName = DEVICE_NAME
    item.Manufacturer = MANUFACTURER
    labels = [" ".join(model_label(result.models, k)) for k in _model_kinds(result)]
    item.ManufacturerModelName = ("; ".join([DEVICE_NAME, *labels]))[:64]
    # Type 2 (Identified Person or Device Macro): the site that sent the study, empty when unknown.
    item.InstitutionName = source.get("InstitutionName") or ""
    item.InstitutionCodeSequence = []  # type 2: we know no code for the site
    return item


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MAMMONODE_{SOFTWARE_VERSION}"[:16]
    return meta


def build_mammography_cad_sr(source: SourceStudy, result: StudyResult, *, created_at: float,
                             device_uid: str | None = None) -> Dataset:
    """The Mammography CAD SR for ``result`` (module doc; docs/sr-tid4000.md), ready for
    ``save_as(..., enforce_file_format=True)`` and C-STORE. ``created_at`` (the result's journal
    time) is the content date/time; ``device_uid`` the installation's Device UID (builds outside a
    node get a fixed one). An incomplete result (no model ran) still gives a valid SR whose
    summaries say Not Attempted, so a workstation shows that CAD did not run rather than nothing."""
    device_uid = device_uid or derived_uid("device", DEVICE_NAME)
    identity = document_identity(source, result, KIND, created_at, device_uid=device_uid, extra=[SOP_CLASS_UID])
    series_number, instance_number = document_numbers(result, KIND, identity.series_instance_uid)
    when = stamp(created_at, source)
    day, clock = when.date, when.time
    ds = Dataset()
    # Patient, General Study, Patient Study: the whole modules of the source images (type 2
    # attributes present, empty when the source lacks them; same Study Instance UID).
    for elem in source.patient_study_attributes():
        ds.add(deepcopy(elem))
    # SR Document Series: our own series.
    ds.Modality = "SR"
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = day, clock
    ds.SeriesDescription = SERIES_DESCRIPTION[KIND]
    ds.ReferencedPerformedProcedureStepSequence = []
    # General Equipment: the node and the model versions it ran.
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = DEVICE_NAME
    ds.SoftwareVersions = [SOFTWARE_VERSION] + [result.models[k][:64] for k in _model_kinds(result)]
    # SR Document General.
    ds.InstanceNumber = instance_number
    ds.CompletionFlag, description = completion(result)
    if description:
        ds.CompletionFlagDescription = description
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = day, clock
    ds.AuthorObserverSequence = [_author(source, result, device_uid)]
    if requests := source.referenced_requests():
        ds.ReferencedRequestSequence = requests
    ds.PerformedProcedureCodeSequence = _procedure_codes(source)
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(source)
    if predecessors := predecessor_documents(result, KIND):  # this result replaces a delivered one
        ds.PredecessorDocumentsSequence = predecessors
    # SR Document Content: the TID 4000 tree.
    root = _plain(_content_root(source, result))
    for elem in root:
        ds.add(elem)
    # SOP Common.
    ds.SOPClassUID = SOP_CLASS_UID
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = day, clock
    if when.offset:  # the source's offset (it applies to the study date and time copied too)
        ds.TimezoneOffsetFromUTC = when.offset
    if C.uses_local_scheme(ds):
        scheme = Dataset()
        scheme.CodingSchemeDesignator = C.LOCAL_SCHEME
        scheme.CodingSchemeName = C.LOCAL_SCHEME_NAME
        scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
        ds.CodingSchemeIdentificationSequence = [scheme]
    ds.SpecificCharacterSet = _character_set(ds)
    ds.file_meta = _file_meta(identity.sop_instance_uid)
    return ds


def _character_set(ds: Dataset) -> str:
    """Latin-1 when every string fits (what most receivers and DCMTK's checker handle), else UTF-8
    (a Chinese report, a patient name in another script)."""
    for elem in ds.iterall():
        values = elem.value if isinstance(elem.value, (list, tuple)) or elem.VM > 1 else [elem.value]
        for value in values:
            if isinstance(value, str) or elem.VR == "PN":
                try:
                    str(value).encode("latin-1")
                except UnicodeEncodeError:
                    return "ISO_IR 192"
    return "ISO_IR 100"


# ---------------------------------------------------------------------------- reading it back
def _code_of(item: Dataset, key: str = "ConceptNameCodeSequence") -> tuple[str, str, str]:
    seq = item.get(key) or []
    if not seq:
        return "", "", ""
    return str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator), str(seq[0].CodeMeaning)


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def _side_of(item: Dataset) -> str | None:
    for child in _children(item):
        if _code_of(child)[0] == LATERALITY.value:
            value = _code_of(child, "ConceptCodeSequence")[0]
            return next((s for s, c in BREAST_SIDE.items() if c.value == value), None)
    return None


def _split_top(text: str) -> list[str]:
    """Split at "; " outside parentheses (the findings sentence nests "; " inside them)."""
    parts, depth, current = [], 0, ""
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == ";" and depth == 0 and text[i + 1:i + 2] == " ":
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _read_findings(text: str, breasts: dict[str, dict[str, Any]]) -> str | None:
    """Finding ids from our own findings sentences; returns the side of the text's first line."""
    names = {t.name: t.id for t in lexicon.by_category("finding")}
    first = _SIDE_LINE.match(text)
    for line in text.splitlines():
        match = _FINDINGS_LINE.match(line.strip())
        if not match:
            continue
        side = "R" if match.group(1) == "Right" else "L"
        entry = breasts.setdefault(side, {"birads": None, "density": None, "findings": []})
        words = match.group(2).strip()
        if words != _NONE_REPORTED:
            for part in _split_top(words):
                name = part.split(" (")[0].strip()
                entry["findings"].append(names.get(name, name.replace(" ", "_")))
    return None if first is None else ("R" if first.group(1) == "Right" else "L")


def _read_algorithms(items: Iterable[Dataset], models: dict[str, str]) -> None:
    name = version = None
    for item in items:
        code = _code_of(item)[0]
        if code == ALGORITHM_NAME.value:
            name, version = str(item.TextValue), None
        elif code == ALGORITHM_VERSION.value:
            version = str(item.TextValue)
        elif code == ALGORITHM_PARAMETERS.value and str(item.TextValue).startswith("kind="):
            kind = str(item.TextValue)[5:]
            if kind != NODE_KIND and name is not None:
                models[kind] = f"{name}@{version}" if version else name


def read_mammography_cad_sr(ds: Dataset) -> dict[str, Any]:
    """What a receiver reads back from our Mammography CAD SR, by walking the content tree (highdicom
    cannot read this SOP class): per breast BI-RADS, density and finding ids, the images with their
    positions, the model versions; the round-trip tests compare it with the result's JSON, so it
    is plain dicts in that shape."""
    if str(ds.get("SOPClassUID", "")) != SOP_CLASS_UID or _code_of(ds)[0] != REPORT.value:
        raise ValueError("not a Mammography CAD SR (TID 4000)")
    images: list[dict[str, str]] = []
    marks: list[dict[str, Any]] = []
    breasts: dict[str, dict[str, Any]] = {}
    models: dict[str, str] = {}
    summary = None
    for item in _children(ds):
        code = _code_of(item)[0]
        if code == IMAGE_LIBRARY.value:
            for entry in _children(item):
                side = view = None
                for ctx in _children(entry):
                    value = _code_of(ctx, "ConceptCodeSequence")[0]
                    if _code_of(ctx)[0] == C.IMAGE_LATERALITY.value:
                        side = next((s for s, c in BREAST_SIDE.items() if c.value == value), None)
                    elif _code_of(ctx)[0] == C.IMAGE_VIEW.value:
                        view = VIEW_NAMES.get(value)
                images.append({"position": f"{side}-{view}",
                               "sop_instance_uid": str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)})
        elif code == CAD_SUMMARY.value:
            summary = _code_of(item, "ConceptCodeSequence")[2]
            body = [c for c in _children(item) if c.RelationshipType == "HAS PROPERTIES"]
            _read_body(body, breasts)
            _read_algorithms(body, models)
            for individual in (c for c in _children(item) if _code_of(c)[0] == INDIVIDUAL_IMPRESSION.value):
                _read_individual(individual, breasts)
                marks += _read_marks(individual)
    positions = {i["sop_instance_uid"]: i["position"] for i in images}
    for mark in marks:
        mark["position"] = positions.get(mark["sop_instance_uid"])
    return {"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID), "summary": summary, "models": models,
            "breasts": breasts, "images": images, "marks": marks}


def _read_marks(container: Dataset) -> list[dict[str, Any]]:
    """The CAD marks of a TID 4003: kind, score, centre, outline's box and the image they are on."""
    out = []
    for finding in _children(container):
        if _code_of(finding)[0] != SINGLE_IMAGE_FINDING.value:
            continue
        value, scheme, _ = _code_of(finding, "ConceptCodeSequence")
        kind = C.mark_kind(value, scheme)
        if kind is None:
            continue
        mark: dict[str, Any] = {"kind": kind}
        for prop in _children(finding):
            code = _code_of(prop)[0]
            if code == CERTAINTY_OF_FINDING.value:
                mark["score"] = float(prop.MeasuredValueSequence[0].NumericValue) / 100.0
            elif code in (CENTER.value, OUTLINE.value):
                points = np.asarray(prop.GraphicData, dtype=float).reshape(-1, 2)
                mark["sop_instance_uid"] = str(prop.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                if code == CENTER.value:
                    mark["center"] = [float(points[0, 0]), float(points[0, 1])]
                else:
                    mark["box"] = [float(points[:, 0].min()), float(points[:, 1].min()),
                                   float(points[:, 0].max()), float(points[:, 1].max())]
        out.append(mark)
    return out


def _read_body(body: list[Dataset], breasts: dict[str, dict[str, Any]]) -> str | None:
    """BI-RADS per laterality and findings sentences of a TID 4002 body; returns its breast, if one."""
    side = None
    for item in body:
        code = _code_of(item)[0]
        if code == C.ASSESSMENT_CATEGORY.value:
            side = _side_of(item)
            if side is not None:
                value, scheme, meaning = _code_of(item, "ConceptCodeSequence")
                entry = breasts.setdefault(side, {"birads": None, "density": None, "findings": []})
                entry["birads"] = C.birads_from_concept(value, scheme, meaning)
        elif code == IMPRESSION_DESCRIPTION.value:
            first = _read_findings(str(item.TextValue), breasts)
            side = side or first
    return side


def _read_individual(container: Dataset, breasts: dict[str, dict[str, Any]]) -> None:
    body = [c for c in _children(container) if c.RelationshipType == "CONTAINS"
            and _code_of(c)[0] != SINGLE_IMAGE_FINDING.value]
    scratch: dict[str, dict[str, Any]] = {}
    side = _read_body(body, scratch)
    if side is None:
        return
    entry = breasts.setdefault(side, {"birads": None, "density": None, "findings": []})
    entry["findings"] = scratch.get(side, {}).get("findings", entry["findings"])
    if entry["birads"] is None:
        entry["birads"] = scratch.get(side, {}).get("birads")
    for finding in (c for c in _children(container) if _code_of(c)[0] == SINGLE_IMAGE_FINDING.value):
        for prop in _children(finding):
            if _code_of(prop)[0] == C.BREAST_COMPOSITION.value:
                entry["density"] = C.density_from_code(_code_of(prop, "ConceptCodeSequence")[0])


__all__ = ["KIND", "SOP_CLASS_UID", "build_mammography_cad_sr", "read_mammography_cad_sr"]

"""The result as a TID 1500 Measurement Report in a Comprehensive 3D SR (IHE AI Results), via highdicom;
or in Comprehensive / Enhanced SR for a destination that stores no 3D SR (same content).

Content tree (docs/dicom-sr.md shows it with every code):

- Imaging Measurement Report, language of the report, device observer (the installation's Device
  Observer UID, node name, model names and versions), procedure reported (the study's procedure
  code, else SCT Mammography), image library (the source images with laterality and view);
- per breast a TID 1501 assessment group: tracking identifier and UID, Finding Breast, finding
  site Breast with laterality, algorithm identification (TID 4019), Assessment Category (BI-RADS),
  Breast composition (density), and the classifier's probability of a BI-RADS 4 or 5 category
  under our own concept (it is not a probability of cancer), and the breast's images as its source;
- then one TID 1501 group per reported finding (row 3b allows one Finding per group): its own
  tracking identifier and UID, the finding, finding sites with laterality and topographical
  modifiers (clock, depth, direction), descriptors and certainty as qualitative evaluations;
- Qualitative Evaluations: the report's Findings and Impressions text and the preliminary-AI
  disclaimer.

The document is in the source study (same Study Instance UID, whole patient and study modules
copied) in our own series, UNVERIFIED, COMPLETE or PARTIAL by content as the CAD SR, with Current
Requested Procedure Evidence listing the source images. UIDs and dates come from the result, the
source and the creation time (node.outputs.source.document_identity), so building it twice gives
the same bytes and anything that changes the bytes changes the SOP Instance UID.
"""
from __future__ import annotations

from typing import Any, Sequence

import highdicom as hd
from highdicom.sr import (CodeContentItem, CodedConcept, ContainerContentItem, ContentSequence, RelationshipTypeValues,
                          TextContentItem)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.report import lexicon
from node.outputs import codes as C
from node.outputs.amend import document_numbers, predecessor_documents
from node.outputs.common import (DEVICE_NAME, DISCLAIMER, MANUFACTURER, SERIES_DESCRIPTION, SOFTWARE_VERSION,
                                 TID1500_KINDS, TID1500_SOP_CLASSES, NotApplicable, completion, model_label,
                                 report_language)
from node.outputs.roi_groups import read_region_groups, region_groups
from node.outputs.source import SourceImage, SourceStudy, stamp
from node.outputs.identity import derived_uid, document_identity
from node.study_result import Breast, ReportFinding, StudyResult

KIND = "tid1500"
COMPREHENSIVE_SR = TID1500_SOP_CLASSES["comprehensive"]
COMPREHENSIVE_3D_SR = TID1500_SOP_CLASSES["comprehensive3d"]
ENHANCED_SR = TID1500_SOP_CLASSES["enhanced"]
SOP_CLASS_UID = COMPREHENSIVE_3D_SR  # IHE AI Results (AIR) sends TID 1500 as Comprehensive 3D SR
# highdicom's class per ``[[outputs.dicom]] tid1500_sop_class``: the content is the same in each.
_SR_CLASSES: dict[str, type[hd.sr.EnhancedSR | hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR]] = {
    "comprehensive3d": hd.sr.Comprehensive3DSR, "comprehensive": hd.sr.ComprehensiveSR, "enhanced": hd.sr.EnhancedSR}
_SIDE_NAMES = {"R": "right breast", "L": "left breast"}


def _procedure(source: SourceStudy) -> list[CodedConcept]:
    seq = source.header.get("ProcedureCodeSequence")
    if seq:
        item = seq[0]
        return [CodedConcept(item.CodeValue, item.CodingSchemeDesignator, str(item.CodeMeaning)[:64])]
    return [CodedConcept.from_dataset(_as_code(C.PROCEDURE_MAMMOGRAPHY))]


def _as_code(code: Any) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return ds


def _finding_sites(side: str, locations: Sequence[str]) -> list[hd.sr.FindingSite]:
    """TID 1501 Finding Site for one finding: the part of the breast (a quadrant, the central or
    subareolar region, ...; the breast when the report names none) with its laterality, and each
    clock position, depth or direction as a topographical modifier. The template gives one modifier
    per site, so a finding with several gets one site per modifier, each naming the same part."""
    structures: list[CodedConcept] = []
    modifiers: list[CodedConcept] = []
    for term_id in locations:
        term, value = lexicon.get(term_id), C.term_concept(term_id)
        if value is None:
            continue
        if term.group in C.TOPOGRAPHICAL_GROUPS or term_id in C.TOPOGRAPHICAL_TERMS:
            modifiers.append(value)
        else:
            structures.append(value)
    laterality = C.side_code(side)
    first = structures[0] if structures else C.BREAST
    sites = [hd.sr.FindingSite(first, laterality, modifier) for modifier in modifiers] or \
        [hd.sr.FindingSite(first, laterality)]
    return sites + [hd.sr.FindingSite(other, laterality) for other in structures[1:]]


def _finding_group(study_uid: str, side: str, index: int, finding: ReportFinding,
                   algorithm: hd.sr.AlgorithmIdentification,
                   sources: list[hd.sr.SourceImageForMeasurementGroup] | None = None,
                   ) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """One TID 1501 group per reported finding: its own tracking identifier and UID, the finding
    (row 3b, once), where it is (finding sites), the breast's images it was read from (IHE AIR's
    image references), and its descriptors and certainty as qualitative evaluations. None for a
    finding kind without a code (it stays in the report text)."""
    concept = C.term_concept(finding.kind)
    if concept is None:
        return None
    evaluations = []
    for term_id in finding.descriptors:
        term, value = lexicon.get(term_id), C.term_concept(term_id)
        if value is not None:
            name = C.DESCRIPTOR_NAMES.get(term.group, C.OTHER_DESCRIPTOR)
            evaluations.append(hd.sr.QualitativeEvaluation(name, value))
    if finding.status == "UNC":
        evaluations.append(hd.sr.QualitativeEvaluation(C.CERTAINTY_OF_FINDING, C.POSSIBLE))
    label = f"{_SIDE_NAMES[side]} finding {index}: {_term_name(finding.kind)}"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", study_uid, side, "finding", str(index), finding.kind),
            identifier=label[:64]),
        finding_type=concept,
        finding_sites=_finding_sites(side, finding.locations),
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations or None,
        source_images=sources or None,
    )


def _term_name(term_id: str) -> str:
    try:
        return lexicon.get(term_id).name
    except KeyError:
        return term_id.replace("_", " ")


def _breast_group(study_uid: str, side: str, breast: Breast,
                  algorithm: hd.sr.AlgorithmIdentification,
                  classifier_algorithm: hd.sr.AlgorithmIdentification,
                  sources: list[hd.sr.SourceImageForMeasurementGroup] | None = None,
                  ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The breast's assessment (TID 1501, Finding = Breast): BI-RADS, composition, and the
    classifier's probability mass on BI-RADS 4 and 5 under our own concept (it is not a
    probability of cancer), with the breast's images as its source (IHE AIR's image references)."""
    evaluations = []
    if breast.birads:
        evaluations.append(hd.sr.QualitativeEvaluation(C.ASSESSMENT_CATEGORY, C.birads_concept(breast.birads)))
    if breast.density:
        evaluations.append(hd.sr.QualitativeEvaluation(C.BREAST_COMPOSITION, C.density_concept(breast.density)))
    measurements = []
    probs = breast.classifier.birads_probabilities if breast.classifier is not None else {}
    if probs:
        suspicious = sum(float(probs.get(k, 0.0)) for k in ("4", "5"))
        measurements.append(hd.sr.Measurement(name=C.SUSPICIOUS_BIRADS_PROBABILITY, value=round(suspicious, 4),
                                              unit=C.UNITLESS, algorithm_id=classifier_algorithm))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("tracking", study_uid, side),
                                                     identifier=_SIDE_NAMES[side]),
        finding_type=C.BREAST,
        finding_sites=[hd.sr.FindingSite(anatomic_location=C.BREAST, laterality=C.side_code(side))],
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations or None,
        measurements=measurements or None,
        source_images=sources or None,
    )


def _groups(study_uid: str, result: StudyResult,
            images: tuple[SourceImage, ...] = ()) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Per breast: its assessment group, then one group per finding (from the report: MammoRG),
    each naming the algorithm (TID 4019: name, version, manufacturer: the models are trained and
    packaged by this project) and the breast's ``images`` it was read from."""
    versions = result.models
    vm_name, vm_version = model_label(versions, "versamammo")
    rg_name, rg_version = model_label(versions, "mammorg")
    both = hd.sr.AlgorithmIdentification(name=f"{vm_name}+{rg_name}"[:64], version=f"{vm_version}+{rg_version}"[:64],
                                         manufacturer=MANUFACTURER)
    classifier = hd.sr.AlgorithmIdentification(name=vm_name[:64], version=vm_version[:64], manufacturer=MANUFACTURER)
    generator = hd.sr.AlgorithmIdentification(name=rg_name[:64], version=rg_version[:64], manufacturer=MANUFACTURER)
    groups = []
    for side in ("R", "L"):
        breast = result.breasts.get(side)
        if breast is None:
            continue
        sources = [hd.sr.SourceImageForMeasurementGroup(i.sop_class_uid, i.sop_instance_uid)
                   for i in images if i.laterality == side]
        groups.append(_breast_group(study_uid, side, breast, both, classifier, sources))
        for index, finding in enumerate(breast.findings, start=1):
            group = _finding_group(study_uid, side, index, finding, generator, sources)
            if group is not None:
                groups.append(group)
    return groups + region_groups(study_uid, result, images, classifier)  # CAD marks: TID 1410 each


_ORIENTATION_ITEMS = ("111044", "111043")  # Patient Orientation Row / Column
_SPACING_ITEMS = ("111026", "111066")  # Horizontal / Vertical Pixel Spacing


def _for_highdicom(source: SourceStudy, image: Any) -> Dataset:
    """The image header as highdicom's SR classes read it: they take the patient and study
    attributes from the first evidence image and a projection image's orientation and imager
    pixel spacing without checking they exist. Type 2 attributes the source lacks are given
    empty; a missing orientation or spacing gets a stand-in whose library items are removed after
    (_describe_library_images). The source dataset is not changed."""
    out = Dataset()
    for element in image.dataset:
        out.add(element)
    for element in source.patient_study_attributes():
        if element.tag not in out:
            out.add(element)
    if len(out.get("PatientOrientation") or []) != 2:
        out.PatientOrientation = ["A", "R"]
    if len(out.get("ImagerPixelSpacing") or []) != 2:
        out.ImagerPixelSpacing = out.get("PixelSpacing") if len(out.get("PixelSpacing") or []) == 2 else [1.0, 1.0]
    return out


def _describe_library_images(root: Dataset, source: SourceStudy) -> None:
    """Add each image's laterality and view (TID 1602 rows) to the image library highdicom wrote:
    a mammography viewer sorts the hanging protocol by them. Rows for an orientation or a pixel
    spacing the image does not have are removed (highdicom wrote stand-ins)."""
    library = next(i for i in root.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    entries = [i for group in library.ContentSequence for i in group.ContentSequence if i.ValueType == "IMAGE"]
    for entry, image in zip(entries, source.images):
        header = image.dataset
        drop = set()
        if len(header.get("PatientOrientation") or []) != 2:
            drop.update(_ORIENTATION_ITEMS)
        if len(header.get("ImagerPixelSpacing") or []) != 2 and len(header.get("PixelSpacing") or []) != 2:
            drop.update(_SPACING_ITEMS)
        if drop:
            entry.ContentSequence = ContentSequence(
                [i for i in entry.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue not in drop])
        entry.ContentSequence.extend([
            CodeContentItem(C.IMAGE_LATERALITY, C.side_code(image.laterality),
                            RelationshipTypeValues.HAS_ACQ_CONTEXT),
            CodeContentItem(C.IMAGE_VIEW, C.view_concept(image.dataset, image.view),
                            RelationshipTypeValues.HAS_ACQ_CONTEXT)])


def _text_container(result: StudyResult) -> ContainerContentItem:
    report = result.report
    items = []
    if report is not None and report.findings:
        items.append(TextContentItem(C.FINDINGS_TEXT, report.findings, RelationshipTypeValues.CONTAINS))
    if report is not None and report.impression:
        items.append(TextContentItem(C.IMPRESSION_TEXT, report.impression, RelationshipTypeValues.CONTAINS))
    if result.missing_views:
        missing = ", ".join(result.missing_views)
        items.append(TextContentItem(C.COMMENT, f"Views missing ({missing}): result from the views present.",
                                     RelationshipTypeValues.CONTAINS))
    for d in result.disagreements:
        items.append(TextContentItem(C.COMMENT, f"{_SIDE_NAMES[d.breast].capitalize()}: report {d.field} "
                                     f"{d.report} differs from classifier {d.classifier}.",
                                     RelationshipTypeValues.CONTAINS))
    items.append(TextContentItem(C.COMMENT, DISCLAIMER, RelationshipTypeValues.CONTAINS))
    container = ContainerContentItem(C.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = ContentSequence(items)
    return container


def build_tid1500_sr(source: SourceStudy, result: StudyResult, *, created_at: float,
                     device_uid: str | None = None, sop_class: str = "comprehensive3d",
                     ) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR:
    """The TID 1500 SR for ``result`` (see the module docstring), in ``sop_class``: Comprehensive 3D
    SR as IHE AIR asks, or Comprehensive / Enhanced SR for a PACS that stores no 3D SR (a document of
    its own: own UIDs and predecessors, node.outputs.common.TID1500_KINDS); ``created_at`` is the
    result's journal time and becomes the content date/time; ``device_uid`` is the installation's
    Device Observer UID (node.outputs.common; builds outside a node get a fixed one). Raises
    NotApplicable for a result without any model output (an incomplete study under
    ``incomplete_policy = "report"``)."""
    if not result.has_model_output:
        raise NotApplicable("no model ran (views missing): the HL7 result says so, no SR is made")
    device_uid = device_uid or derived_uid("device", DEVICE_NAME)
    kind, sop_class_uid = TID1500_KINDS[sop_class], TID1500_SOP_CLASSES[sop_class]
    identity = document_identity(source, result, kind, created_at, device_uid=device_uid, extra=[sop_class_uid])
    series_number, instance_number = document_numbers(result, kind, identity.series_instance_uid)
    versions = result.models
    vm_name, vm_version = model_label(versions, "versamammo")
    rg_name, rg_version = model_label(versions, "mammorg")
    models_text = f"{vm_name} {vm_version}; {rg_name} {rg_version}"
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid, name=DEVICE_NAME, manufacturer_name=MANUFACTURER, model_name=models_text[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = _groups(source.study_uid, result, source.images)
    tag, meaning = report_language(result)
    language = CodedConcept(tag, "RFC5646", meaning)
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=_procedure(source), imaging_measurements=groups or None,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(language),
        referenced_images=[_for_highdicom(source, image) for image in source.images])
    _describe_library_images(report[0], source)
    report[0].ContentSequence.append(_text_container(result))
    flag, flag_description = completion(result)
    sr = _SR_CLASSES[sop_class](
        evidence=[_for_highdicom(source, image) for image in source.images], content=report[0],
        series_instance_uid=identity.series_instance_uid, series_number=series_number,
        sop_instance_uid=identity.sop_instance_uid, instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=flag == "COMPLETE", is_final=False, is_verified=False,
        record_evidence=False,  # set below from the source images: highdicom's tree search is slow
        institution_name=source.get("InstitutionName") or None,
        performed_procedure_codes=_procedure(source),
        series_description=SERIES_DESCRIPTION[KIND], software_versions=SOFTWARE_VERSION,
        manufacturer_model_name=DEVICE_NAME)
    for element in source.patient_study_attributes():  # the whole modules, type 2 present
        sr[element.tag] = element
    if flag_description:
        sr.CompletionFlagDescription = flag_description
    when = stamp(created_at, source)
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(sr, f"{prefix}Date", when.date)
        setattr(sr, f"{prefix}Time", when.time)
    if when.offset:
        sr.TimezoneOffsetFromUTC = when.offset
    elif "TimezoneOffsetFromUTC" in sr:
        del sr.TimezoneOffsetFromUTC
    sr.CurrentRequestedProcedureEvidenceSequence = source.evidence()
    if requests := source.referenced_requests():
        sr.ReferencedRequestSequence = requests
    if predecessors := predecessor_documents(result, kind):  # this result replaces a delivered one
        sr.PredecessorDocumentsSequence = predecessors
    if C.uses_local_scheme(sr):  # BI-RADS 6, the classifier's BI-RADS 4/5 probability
        sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    if not _fits(sr.get("SpecificCharacterSet"), result):
        sr.SpecificCharacterSet = "ISO_IR 192"  # report text beyond the source images' character set
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps "now": use the result's time
            item.ContributionDateTime = when.datetime + (when.offset or "")
    return sr


def _local_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = C.LOCAL_SCHEME
    item.CodingSchemeName = C.LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _fits(charset: Any, result: StudyResult) -> bool:
    """Whether the report text can be written in the character set copied from the source images."""
    names = [charset] if isinstance(charset, str) else list(charset or [])
    if any(n == "ISO_IR 192" for n in names):
        return True
    encoding = "latin-1" if any(n == "ISO_IR 100" for n in names) else "ascii"
    text = " ".join(result.report.texts()) if result.report is not None else ""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _side(site: hd.sr.FindingSite) -> str | None:
    laterality = site.laterality
    if laterality is None:
        return None
    return {C.RIGHT.value: "R", C.LEFT.value: "L"}.get(laterality.value)


def _location_term(code: CodedConcept | None) -> str | None:
    if code is None or code.value == C.BREAST.value:
        return None
    return C.term_from_code(code.value, code.scheme_designator, "location")


def _read_finding(group: hd.sr.MeasurementsAndQualitativeEvaluations, kind: str) -> dict[str, Any]:
    """A finding group as the result has it: status, locations (the sites' parts of the breast,
    then their modifiers), descriptors."""
    structures: list[str] = []
    modifiers: list[str] = []
    for site in group.finding_sites:
        for term, bucket in ((_location_term(site.value), structures),
                             (_location_term(site.topographical_modifier), modifiers)):
            if term and term not in bucket:
                bucket.append(term)
    status, descriptors = "POS", []
    for evaluation in group.get_qualitative_evaluations():
        if evaluation.name.value == C.CERTAINTY_OF_FINDING.value:
            status = "UNC" if evaluation.value.value == C.POSSIBLE.value else status
            continue
        term = C.term_from_code(evaluation.value.value, evaluation.value.scheme_designator, "descriptor")
        if term:
            descriptors.append(term)
    return {"kind": kind, "status": status, "locations": structures + modifiers, "descriptors": descriptors}


def read_tid1500_sr(ds: Dataset) -> dict[str, Any]:
    """What a receiver reads back from our SR, through highdicom's public TID 1500 reader only (its
    properties warn where the SR breaks the template): per breast BI-RADS, density and findings,
    the model versions and the report text; the round-trip tests compare it with the result's
    JSON, so it is plain dicts in the JSON's shape."""
    if isinstance(ds, (hd.sr.ComprehensiveSR, hd.sr.Comprehensive3DSR, hd.sr.EnhancedSR)):
        sr = ds
    else:
        by_uid = {uid: _SR_CLASSES[name] for name, uid in TID1500_SOP_CLASSES.items()}
        sr = by_uid.get(str(ds.SOPClassUID), hd.sr.ComprehensiveSR).from_dataset(ds)
    report = sr.content
    breasts: dict[str, Any] = {}
    for group in report.get_image_measurement_groups():
        finding = group.finding_type
        sides = {_side(site) for site in group.finding_sites} - {None}
        if finding is None or len(sides) != 1:
            continue
        entry = breasts.setdefault(sides.pop(), {"birads": None, "density": None, "findings": []})
        if finding.value == C.BREAST.value:
            for evaluation in group.get_qualitative_evaluations():
                value = evaluation.value
                if evaluation.name.value == C.ASSESSMENT_CATEGORY.value:
                    entry["birads"] = C.birads_from_concept(value.value, value.scheme_designator, value.meaning)
                elif evaluation.name.value == C.BREAST_COMPOSITION.value:
                    entry["density"] = C.density_from_code(value.value)
            continue
        kind = C.term_from_code(finding.value, finding.scheme_designator, "finding")
        if kind:
            entry["findings"].append(_read_finding(group, kind))
    texts: dict[str, str] = {}
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == C.QUALITATIVE_EVALUATIONS.value:
            for child in item.ContentSequence:
                key = child.ConceptNameCodeSequence[0].CodeMeaning.lower()
                texts.setdefault(key, child.TextValue)
    device = report.get_observer_contexts()
    return {"study_uid": str(sr.StudyInstanceUID), "breasts": breasts,
            "findings_text": texts.get("findings"), "impression_text": texts.get("impressions"),
            "models": str(device[0].observer_identifying_attributes.model_name) if device else None,
            "marks": read_region_groups(sr)}

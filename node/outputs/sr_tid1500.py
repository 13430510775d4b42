"""The result as a Comprehensive SR with a TID 1500 Measurement Report (IHE AI Results), via highdicom.

Content tree (docs/dicom-sr.md shows it with every code):

- Imaging Measurement Report, language, device observer (node name, model names and versions),
  procedure reported (the study's procedure code, else SCT Mammography), image library (the
  four source images with laterality and view);
- one TID 1501 measurement group per breast: tracking identifier, finding site Breast with
  laterality, algorithm identification (TID 4019), qualitative evaluations Assessment Category
  (BI-RADS), Breast composition (density), one Finding per reported finding (POS, or UNC with
  the certainty said) with its locations and descriptors as properties, and the classifier's
  probability of a BI-RADS 4/5 category as a measurement;
- Qualitative Evaluations: the report's Findings and Impressions text and the preliminary-AI
  disclaimer.

The document is in the source study (same Study Instance UID) in our own series, UNVERIFIED and
PARTIAL (a radiologist has not signed it), with Current Requested Procedure Evidence listing the
source images. UIDs and dates come from the result (node.outputs.source.output_identity), so
building it twice gives the same bytes.
"""
from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.sr import (CodeContentItem, CodedConcept, ContainerContentItem, ContentSequence, RelationshipTypeValues,
                          TextContentItem)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models import lexicon
from node.outputs import codes as C
from node.outputs.amend import predecessor_documents
from node.outputs.common import (DEVICE_NAME, DISCLAIMER, INSTANCE_NUMBER, MANUFACTURER, SERIES_DESCRIPTION,
                                 SERIES_NUMBER, SOFTWARE_VERSION, NotApplicable, model_label, utc)
from node.outputs.source import SourceStudy, derived_uid, output_identity

KIND = "tid1500"
_SIDE_NAMES = {"R": "right breast", "L": "left breast"}
ENGLISH = CodedConcept("en-US", "RFC5646", "English (United States)")
UNCERTAIN = CodedConcept("111012", "DCM", "Certainty of Finding")  # value: Possible (CID 6048 style)


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


def _property(name: Any, value: CodedConcept) -> CodeContentItem:
    return CodeContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.HAS_PROPERTIES)


def _finding_evaluation(finding: dict[str, Any]) -> hd.sr.QualitativeEvaluation | None:
    """One reported finding: its code, with locations, descriptors and certainty as properties."""
    concept = C.term_concept(finding["kind"])
    if concept is None:
        return None
    evaluation = hd.sr.QualitativeEvaluation(C.FINDING, concept)
    children = []
    for term_id in finding.get("locations", []):
        term, value = lexicon.get(term_id), C.term_concept(term_id)
        name = C.LOCATION_NAMES.get(term.group)
        if name is not None and value is not None:
            children.append(_property(name, value))
    for term_id in finding.get("descriptors", []):
        term, value = lexicon.get(term_id), C.term_concept(term_id)
        if value is not None:
            children.append(_property(C.DESCRIPTOR_NAMES.get(term.group, C.FINDING), value))
    if finding.get("status") == "UNC":
        children.append(_property(UNCERTAIN, CodedConcept("371930009", "SCT", "Possible")))
    if children:
        evaluation[0].ContentSequence = ContentSequence(children)
    return evaluation


def _breast_group(study_uid: str, side: str, breast: dict[str, Any],
                  algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    evaluations = []
    if breast.get("birads"):
        evaluations.append(hd.sr.QualitativeEvaluation(C.ASSESSMENT_CATEGORY, C.birads_concept(breast["birads"])))
    if breast.get("density"):
        evaluations.append(hd.sr.QualitativeEvaluation(C.BREAST_COMPOSITION, C.density_concept(breast["density"])))
    for finding in breast.get("findings", []):
        evaluation = _finding_evaluation(finding)
        if evaluation is not None:
            evaluations.append(evaluation)
    measurements = []
    classifier = breast.get("classifier") or {}
    probs = classifier.get("birads_probabilities") or {}
    if probs:
        suspicious = sum(float(probs.get(k, 0.0)) for k in ("4", "5"))
        measurements.append(hd.sr.Measurement(name=C.PROBABILITY_OF_CANCER, value=round(suspicious, 4),
                                              unit=C.UNITLESS, algorithm_id=algorithm))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("tracking", study_uid, side),
                                                     identifier=_SIDE_NAMES[side]),
        finding_type=C.BREAST,
        finding_sites=[hd.sr.FindingSite(anatomic_location=C.BREAST, laterality=C.side_code(side))],
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations or None,
        measurements=measurements or None,
    )


def _describe_library_images(root: Dataset, source: SourceStudy) -> None:
    """Add each image's laterality and view (TID 1602 rows) to the image library highdicom wrote:
    a mammography viewer sorts the hanging protocol by them."""
    library = next(i for i in root.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    entries = [i for group in library.ContentSequence for i in group.ContentSequence if i.ValueType == "IMAGE"]
    for entry, image in zip(entries, source.images):
        entry.ContentSequence.extend([
            CodeContentItem(C.IMAGE_LATERALITY, C.side_code(image.laterality),
                            RelationshipTypeValues.HAS_ACQ_CONTEXT),
            CodeContentItem(C.IMAGE_VIEW, C.view_concept(image.dataset, image.view),
                            RelationshipTypeValues.HAS_ACQ_CONTEXT)])


def _text_container(result: dict[str, Any]) -> ContainerContentItem:
    report = result.get("report") or {}
    items = []
    if report.get("findings"):
        items.append(TextContentItem(C.FINDINGS_TEXT, report["findings"], RelationshipTypeValues.CONTAINS))
    if report.get("impression"):
        items.append(TextContentItem(C.IMPRESSION_TEXT, report["impression"], RelationshipTypeValues.CONTAINS))
    if result.get("missing_views"):
        missing = ", ".join(result["missing_views"])
        items.append(TextContentItem(C.COMMENT, f"Views missing ({missing}): result from the views present.",
                                     RelationshipTypeValues.CONTAINS))
    for d in result.get("disagreements", []):
        items.append(TextContentItem(C.COMMENT, f"{_SIDE_NAMES[d['breast']].capitalize()}: report {d['field']} "
                                     f"{d['report']} differs from classifier {d['classifier']}.",
                                     RelationshipTypeValues.CONTAINS))
    items.append(TextContentItem(C.COMMENT, DISCLAIMER, RelationshipTypeValues.CONTAINS))
    container = ContainerContentItem(C.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = ContentSequence(items)
    return container


def build_tid1500_sr(source: SourceStudy, result: dict[str, Any], *, created_at: float) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR for ``result`` (see the module docstring); ``created_at`` is the result's
    journal time and becomes the content date/time. Raises NotApplicable for a result without any
    model output (an incomplete study under ``incomplete_policy = "report"``)."""
    if result.get("status") == "incomplete" or not result.get("breasts"):
        raise NotApplicable("no model ran (views missing): the HL7 result says so, no SR is made")
    identity = output_identity(source.study_uid, result, KIND)
    versions = result.get("models", {})
    vm_name, vm_version = model_label(versions, "versamammo")
    rg_name, rg_version = model_label(versions, "mammorg")
    models_text = f"{vm_name} {vm_version}; {rg_name} {rg_version}"
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", DEVICE_NAME), name=DEVICE_NAME, manufacturer_name=MANUFACTURER,
        model_name=models_text[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=f"{vm_name}+{rg_name}"[:64],
                                              version=f"{vm_version}+{rg_version}"[:64])
    groups = [_breast_group(source.study_uid, side, result["breasts"][side], algorithm)
              for side in ("R", "L") if side in result.get("breasts", {})]
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=_procedure(source), imaging_measurements=groups or None,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(ENGLISH),
        referenced_images=[image.dataset for image in source.images])
    _describe_library_images(report[0], source)
    report[0].ContentSequence.append(_text_container(result))
    sr = hd.sr.ComprehensiveSR(
        evidence=[image.dataset for image in source.images], content=report[0],
        series_instance_uid=identity.series_instance_uid, series_number=SERIES_NUMBER[KIND],
        sop_instance_uid=identity.sop_instance_uid, instance_number=INSTANCE_NUMBER,
        manufacturer=MANUFACTURER, is_complete=False, is_final=False, is_verified=False,
        record_evidence=False,  # set below from the source images: highdicom's tree search is slow
        institution_name=source.get("InstitutionName") or None,
        performed_procedure_codes=_procedure(source),
        series_description=SERIES_DESCRIPTION[KIND], software_versions=SOFTWARE_VERSION,
        manufacturer_model_name=DEVICE_NAME)
    when = utc(created_at)
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(sr, f"{prefix}Date", when.strftime("%Y%m%d"))
        setattr(sr, f"{prefix}Time", when.strftime("%H%M%S"))
    sr.TimezoneOffsetFromUTC = "+0000"
    sr.CurrentRequestedProcedureEvidenceSequence = source.evidence()
    if predecessors := predecessor_documents(result, KIND):  # this result replaces a delivered one
        sr.PredecessorDocumentsSequence = predecessors
    if any(breast.get("birads") == "6" for breast in result.get("breasts", {}).values()):
        sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    if not _fits(sr.get("SpecificCharacterSet"), result):
        sr.SpecificCharacterSet = "ISO_IR 192"  # report text beyond the source images' character set
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps "now": use the result's time
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    return sr


def _finding_properties(item: Dataset) -> dict[str, Any]:
    locations, descriptors, status = [], [], "POS"
    for child in item.get("ContentSequence", []):
        name, value = child.ConceptNameCodeSequence[0], child.ConceptCodeSequence[0]
        if name.CodeValue == UNCERTAIN.value:
            status = "UNC"
            continue
        category = "location" if name.CodeValue in {c.value for c in C.LOCATION_NAMES.values()} else "descriptor"
        term = C.term_from_code(value.CodeValue, value.CodingSchemeDesignator, category)
        if term:
            (locations if category == "location" else descriptors).append(term)
    return {"status": status, "locations": locations, "descriptors": descriptors}


def _local_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = C.LOCAL_SCHEME
    item.CodingSchemeName = C.LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _fits(charset: Any, result: dict[str, Any]) -> bool:
    """Whether the report text can be written in the character set copied from the source images."""
    names = [charset] if isinstance(charset, str) else list(charset or [])
    if any(n == "ISO_IR 192" for n in names):
        return True
    encoding = "latin-1" if any(n == "ISO_IR 100" for n in names) else "ascii"
    text = " ".join(str(v) for v in (result.get("report") or {}).values() if v)
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def read_tid1500_sr(ds: Dataset) -> dict[str, Any]:
    """What a receiver reads back from our SR (highdicom's parser): per breast BI-RADS, density and
    finding ids, the model versions and the report text; the round-trip tests compare it with the result."""
    sr = ds if isinstance(ds, hd.sr.ComprehensiveSR) else hd.sr.ComprehensiveSR.from_dataset(ds)
    report = sr.content
    breasts: dict[str, Any] = {}
    for group in report.get_image_measurement_groups():
        side = None
        for site in group.finding_sites:
            for mod in site.ContentSequence if "ContentSequence" in site else []:
                if mod.ConceptCodeSequence[0].CodeValue == C.RIGHT.value:
                    side = "R"
                elif mod.ConceptCodeSequence[0].CodeValue == C.LEFT.value:
                    side = "L"
        if side is None:
            continue
        entry: dict[str, Any] = {"birads": None, "density": None, "findings": []}
        for item in group[0].ContentSequence:
            if item.ValueType != "CODE" or item.RelationshipType != "CONTAINS":
                continue
            name, value = item.ConceptNameCodeSequence[0], item.ConceptCodeSequence[0]
            if name.CodeValue == C.ASSESSMENT_CATEGORY.value:
                entry["birads"] = C.birads_from_concept(value.CodeValue, value.CodingSchemeDesignator,
                                                        value.CodeMeaning)
            elif name.CodeValue == C.BREAST_COMPOSITION.value:
                entry["density"] = C.density_from_code(value.CodeValue)
            elif name.CodeValue == C.FINDING.value and value.CodeValue != C.BREAST.value:
                kind = C.term_from_code(value.CodeValue, value.CodingSchemeDesignator, "finding")
                if kind:
                    entry["findings"].append({"kind": kind, **_finding_properties(item)})
        breasts[side] = entry
    texts: dict[str, str] = {}
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == C.QUALITATIVE_EVALUATIONS.value:
            for child in item.ContentSequence:
                key = child.ConceptNameCodeSequence[0].CodeMeaning.lower()
                texts.setdefault(key, child.TextValue)
    device = report.get_observer_contexts()
    return {"study_uid": str(sr.StudyInstanceUID), "breasts": breasts,
            "findings_text": texts.get("findings"), "impression_text": texts.get("impressions"),
            "models": str(device[0].observer_identifying_attributes.model_name) if device else None}

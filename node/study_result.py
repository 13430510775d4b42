"""The structured result of one study as typed values, and its JSON form.

Why: the result is made in one place (node.results, node.pipeline, node.outputs.prepare) and read
in many (the TID 1500 and CAD SRs, the ORU, the presentation states and heatmaps, the amendment
links). As a ``dict[str, Any]`` every reader guessed its shape; here the shape is written down once
and the readers use attributes. JSON exists only at the journal's edge: the pipeline journals
``to_json()``, whoever reads a journaled result to render or link outputs calls ``from_json``.

The JSON is the contract (docs/results.md lists every field; ``mammo-node studies show --json`` and
the journal show it), and the UIDs and HL7 control IDs of every output are hashes of it
(node.outputs.identity). So ``to_json`` writes exactly what the node wrote before these classes
existed: the same keys in the same order, optional keys absent when absent, numbers as they came
(an ``int`` stays an ``int``, nothing is re-rounded), and ``from_json(x).to_json() == x`` for every
result the node has journaled, including older shapes (no ``localization``; the ``incomplete``
result with ``"report": null`` and no ``relations``; ``replaces`` links without numbers or filler
order number). Keys that a hand-written result leaves out read as the encoders always treated them
(no status: complete; no findings: none); a key this module does not know is an error, never
silently dropped, because dropping it would change the result's fingerprint.

Standard library only: the CLI, the outputs and the tests read results without numpy or torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

JSON = dict[str, Any]
SIDES = ("R", "L")


def _only(data: Mapping[str, Any], known: tuple[str, ...], what: str) -> None:
    """Refuse keys no class here represents (they would be lost by a round trip)."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}")


# ---------------------------------------------------------------------------- per breast
@dataclass(frozen=True)
class ReportFinding:
    """A finding the generated report states (POS) or suggests (UNC) in one breast, with lexicon ids
    (models.report.result.FindingResult.to_dict is its JSON)."""

    kind: str
    status: str = "POS"
    locations: tuple[str, ...] = ()
    descriptors: tuple[str, ...] = ()
    box: tuple[float, ...] | None = None   # absent from the JSON when None (the parser gives none)
    score: float | None = None             # absent from the JSON when None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportFinding:
        _only(data, ("kind", "status", "locations", "descriptors", "box", "score"), "report finding")
        box = data.get("box")
        return cls(kind=data["kind"], status=data.get("status") or "POS",
                   locations=tuple(data.get("locations") or ()), descriptors=tuple(data.get("descriptors") or ()),
                   box=None if box is None else tuple(box), score=data.get("score"))

    def to_json(self) -> JSON:
        out: JSON = {"kind": self.kind, "status": self.status, "locations": list(self.locations),
                     "descriptors": list(self.descriptors)}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass(frozen=True)
class ClassifierFinding:
    """A VersaMammo finding class at or above the listing threshold, with its probability."""

    kind: str
    score: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassifierFinding:
        _only(data, ("kind", "score"), "classifier finding")
        return cls(kind=data["kind"], score=data["score"])

    def to_json(self) -> JSON:
        return {"kind": self.kind, "score": self.score}


@dataclass(frozen=True)
class ClassifierOutput:
    """VersaMammo on one breast (mean over its views): the most probable BI-RADS class (merged 4)
    and density, every class's probability, and the findings listed as present."""

    birads: str
    birads_probabilities: Mapping[str, float]
    density: str
    density_probabilities: Mapping[str, float]
    findings: tuple[ClassifierFinding, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassifierOutput:
        _only(data, ("birads", "birads_probabilities", "density", "density_probabilities", "findings"),
              "classifier output")
        return cls(birads=data["birads"], birads_probabilities=dict(data.get("birads_probabilities") or {}),
                   density=data["density"], density_probabilities=dict(data.get("density_probabilities") or {}),
                   findings=tuple(ClassifierFinding.from_json(f) for f in data.get("findings") or ()))

    def to_json(self) -> JSON:
        return {"birads": self.birads, "birads_probabilities": dict(self.birads_probabilities),
                "density": self.density, "density_probabilities": dict(self.density_probabilities),
                "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True)
class BreastReport:
    """What the generated report itself says about one breast (None where it says nothing)."""

    density: str | None = None
    birads: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BreastReport:
        _only(data, ("density", "birads"), "breast report")
        return cls(density=data.get("density"), birads=data.get("birads"))

    def to_json(self) -> JSON:
        return {"density": self.density, "birads": self.birads}


@dataclass(frozen=True)
class Breast:
    """One breast's result: the reported BI-RADS and density with the source each came from
    ("report" or "classifier"), the report's findings, and both sources' own values."""

    density: str | None = None
    density_source: str | None = None
    birads: str | None = None
    birads_source: str | None = None
    findings: tuple[ReportFinding, ...] = ()
    report: BreastReport = field(default_factory=BreastReport)
    classifier: ClassifierOutput | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Breast:
        _only(data, ("density", "density_source", "birads", "birads_source", "findings", "report", "classifier"),
              "breast")
        classifier = data.get("classifier")
        return cls(density=data.get("density"), density_source=data.get("density_source"),
                   birads=data.get("birads"), birads_source=data.get("birads_source"),
                   findings=tuple(ReportFinding.from_json(f) for f in data.get("findings") or ()),
                   report=BreastReport.from_json(data.get("report") or {}),
                   classifier=None if classifier is None else ClassifierOutput.from_json(classifier))

    def to_json(self) -> JSON:
        return {"density": self.density, "density_source": self.density_source, "birads": self.birads,
                "birads_source": self.birads_source, "findings": [f.to_json() for f in self.findings],
                "report": self.report.to_json(),
                "classifier": None if self.classifier is None else self.classifier.to_json()}


@dataclass(frozen=True)
class Disagreement:
    """A breast where the generated report and the classifier differ on ``field`` ("birads" or "density")."""

    breast: str
    field: str
    report: str
    classifier: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Disagreement:
        _only(data, ("breast", "field", "report", "classifier"), "disagreement")
        return cls(breast=data["breast"], field=data["field"], report=data["report"], classifier=data["classifier"])

    def to_json(self) -> JSON:
        return {"breast": self.breast, "field": self.field, "report": self.report, "classifier": self.classifier}


# ---------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class ReportSections:
    """The generated report: its whole text and the two sections models.report.parse found."""

    text: str = ""
    findings: str = ""
    impression: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportSections:
        _only(data, ("text", "findings", "impression"), "report")
        return cls(text=data.get("text") or "", findings=data.get("findings") or "",
                   impression=data.get("impression") or "")

    def to_json(self) -> JSON:
        return {"text": self.text, "findings": self.findings, "impression": self.impression}

    def texts(self) -> tuple[str, ...]:
        """Every text the report has (an encoder picks a character set and language for them all)."""
        return tuple(t for t in (self.text, self.findings, self.impression) if t)


@dataclass(frozen=True)
class Localization:
    """Whether CAD marks were attempted: not (and ``why``), or with the settings the marks were made
    with (node.marks.mark_settings)."""

    attempted: bool
    why: str | None = None                    # only when not attempted
    mark_threshold: float | None = None       # only when attempted
    max_marks_per_image: int | None = None    # only when attempted

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Localization:
        _only(data, ("attempted", "why", "mark_threshold", "max_marks_per_image"), "localization")
        return cls(attempted=bool(data.get("attempted")), why=data.get("why"),
                   mark_threshold=data.get("mark_threshold"), max_marks_per_image=data.get("max_marks_per_image"))

    def to_json(self) -> JSON:
        out: JSON = {"attempted": self.attempted}
        for key in ("why", "mark_threshold", "max_marks_per_image"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class CadMark:
    """One CAD mark as the result keeps it (node.marks.Mark.to_dict: rounded to what the encoders
    write), in pixel-edge coordinates of the source image at ``position``."""

    position: str
    kind: str
    score: float
    kind_score: float
    center: tuple[float, float]
    box: tuple[float, float, float, float]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CadMark:
        _only(data, ("position", "kind", "score", "kind_score", "center", "box"), "CAD mark")
        center, box = tuple(data["center"]), tuple(data["box"])
        if len(center) != 2 or len(box) != 4:
            raise ValueError("CAD mark: center needs 2 coordinates and box 4")
        return cls(position=data["position"], kind=data["kind"], score=data["score"],
                   kind_score=data["kind_score"], center=(center[0], center[1]), box=(box[0], box[1], box[2], box[3]))

    def to_json(self) -> JSON:
        return {"position": self.position, "kind": self.kind, "score": self.score, "kind_score": self.kind_score,
                "center": list(self.center), "box": list(self.box)}


@dataclass(frozen=True)
class LesionMap:
    """One image's lesion map (node.marks.lesion_map_record): grid probabilities, the fields of the
    models.preprocess.geometry.ModelGeometry that maps the model image back onto the source image,
    and the model image size (rows, cols). Kept as data here so reading a result needs no numpy."""

    map: tuple[tuple[float, ...], ...]
    geometry: Mapping[str, Any]
    model_size: tuple[int, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LesionMap:
        _only(data, ("map", "geometry", "model_size"), "lesion map")
        rows, cols = data["model_size"]
        return cls(map=tuple(tuple(row) for row in data["map"]), geometry=dict(data["geometry"]),
                   model_size=(rows, cols))

    def to_json(self) -> JSON:
        return {"map": [list(row) for row in self.map], "geometry": dict(self.geometry),
                "model_size": list(self.model_size)}


@dataclass(frozen=True)
class DocumentRef:
    """How receivers know one SR: its UIDs, SOP class and numbers. A planned document always has
    the numbers; a ``replaces`` link recorded before they existed has none (absent, not null)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    series_number: int | None = None
    instance_number: int | None = None

    @property
    def key(self) -> str:
        """Its outbox identity."""
        return self.sop_instance_uid

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DocumentRef:
        _only(data, ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "series_number",
                     "instance_number"), "document")
        return cls(study_uid=data["study_uid"], series_uid=data["series_uid"],
                   sop_instance_uid=data["sop_instance_uid"], sop_class_uid=data["sop_class_uid"],
                   series_number=data.get("series_number"), instance_number=data.get("instance_number"))

    def to_json(self) -> JSON:
        out: JSON = {"study_uid": self.study_uid, "series_uid": self.series_uid,
                     "sop_instance_uid": self.sop_instance_uid, "sop_class_uid": self.sop_class_uid}
        if self.series_number is not None:
            out["series_number"] = self.series_number
        if self.instance_number is not None:
            out["instance_number"] = self.instance_number
        return out


@dataclass(frozen=True)
class MessageRef:
    """How the RIS knows one ORU^R01: its control ID and the filler order number it was filed under
    (absent in links recorded before the number existed)."""

    control_id: str
    filler_order_number: str | None = None

    @property
    def key(self) -> str:
        """Its outbox identity."""
        return self.control_id

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MessageRef:
        _only(data, ("control_id", "filler_order_number"), "message")
        return cls(control_id=data["control_id"], filler_order_number=data.get("filler_order_number"))

    def to_json(self) -> JSON:
        out: JSON = {"control_id": self.control_id}
        if self.filler_order_number is not None:
            out["filler_order_number"] = self.filler_order_number
        return out


OutputRef = DocumentRef | MessageRef
ORU_KIND = "oru"  # the one output kind a ``replaces`` link names by message, not by document


def output_ref(kind: str, data: Mapping[str, Any]) -> OutputRef:
    """A ``replaces`` link of ``kind`` from its JSON."""
    return MessageRef.from_json(data) if kind == ORU_KIND else DocumentRef.from_json(data)


_KEYS = ("status", "missing_views", "breasts", "disagreements", "report", "relations", "models", "preliminary",
         "localization", "marks", "lesion_maps", "timings", "missing_why", "seconds", "replaces", "documents")


@dataclass(frozen=True)
class StudyResult:
    """The result of one study (docs/results.md). Fields after ``preliminary`` are absent from the
    JSON when None; their order is the order the node adds them (results, pipeline, planning)."""

    status: str = "complete"                                # complete | partial | incomplete
    missing_views: tuple[str, ...] = ()
    breasts: Mapping[str, Breast] = field(default_factory=dict)   # "R", "L"; empty when no model ran
    disagreements: tuple[Disagreement, ...] = ()
    report: ReportSections | None = None                    # None (null) when no model ran
    relations: tuple[tuple[str, ...], ...] | None = None    # (finding, relation, term); absent when no model ran
    models: Mapping[str, str] = field(default_factory=dict)  # kind -> NAME@VERSION
    preliminary: bool = True
    localization: Localization | None = None
    marks: tuple[CadMark, ...] | None = None                 # when localisation was attempted
    lesion_maps: Mapping[str, LesionMap] | None = None       # per position, when attempted
    timings: Mapping[str, float] | None = None               # seconds per stage of the model run
    missing_why: Mapping[str, Any] | None = None             # per missing position
    seconds: float | None = None                             # PROCESSING to DONE
    replaces: Mapping[str, OutputRef] | None = None          # per output kind (node.outputs.amend)
    documents: Mapping[str, DocumentRef] | None = None       # SRs planned for it (node.outputs.prepare)

    @classmethod
    def incomplete(cls, missing_views: Sequence[str]) -> StudyResult:
        """What a study closed without all views gets under ``incomplete_policy = "report"``: no model ran."""
        return cls(status="incomplete", missing_views=tuple(missing_views), breasts={}, disagreements=(),
                   report=None, models={}, preliminary=True)

    # ------------------------------------------------------------------ reading it
    @property
    def has_model_output(self) -> bool:
        """Whether models ran (a TID 1500 SR needs their output; an incomplete result has none)."""
        return self.status != "incomplete" and bool(self.breasts)

    @property
    def localization_attempted(self) -> bool:
        return self.localization is not None and self.localization.attempted

    def marks_on(self, position: str) -> list[CadMark]:
        """The CAD marks on the image at ``position``, in the result's order."""
        return [m for m in self.marks or () if m.position == position]

    def marks_of_breast(self, side: str) -> list[CadMark]:
        """The CAD marks on the images of breast ``side`` ("R" or "L")."""
        return [m for m in self.marks or () if m.position.startswith(side + "-")]

    def replaced_document(self, kind: str) -> DocumentRef | None:
        """The delivered SR of ``kind`` this result replaces, if any."""
        link = (self.replaces or {}).get(kind)
        return link if isinstance(link, DocumentRef) else None

    def replaced_message(self) -> MessageRef | None:
        """The delivered ORU^R01 this result replaces, if any."""
        link = (self.replaces or {}).get(ORU_KIND)
        return link if isinstance(link, MessageRef) else None

    # ------------------------------------------------------------------ JSON
    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudyResult:
        """A result from its JSON (the journal's, or one written by hand in a test)."""
        _only(data, _KEYS, "result")
        report, relations = data.get("report"), data.get("relations")
        localization, marks, maps = data.get("localization"), data.get("marks"), data.get("lesion_maps")
        replaces, documents = data.get("replaces"), data.get("documents")
        timings, missing_why = data.get("timings"), data.get("missing_why")
        return cls(
            status=data.get("status") or "complete",
            missing_views=tuple(data.get("missing_views") or ()),
            breasts={side: Breast.from_json(b) for side, b in (data.get("breasts") or {}).items()},
            disagreements=tuple(Disagreement.from_json(d) for d in data.get("disagreements") or ()),
            report=None if report is None else ReportSections.from_json(report),
            relations=None if relations is None else tuple(tuple(t) for t in relations),
            models=dict(data.get("models") or {}),
            preliminary=bool(data.get("preliminary", True)),
            localization=None if localization is None else Localization.from_json(localization),
            marks=None if marks is None else tuple(CadMark.from_json(m) for m in marks),
            lesion_maps=None if maps is None else {p: LesionMap.from_json(m) for p, m in maps.items()},
            timings=None if timings is None else dict(timings),
            missing_why=None if missing_why is None else dict(missing_why),
            seconds=data.get("seconds"),
            replaces=None if replaces is None else {k: output_ref(k, v) for k, v in replaces.items()},
            documents=None if documents is None else {k: DocumentRef.from_json(v) for k, v in documents.items()},
        )

    def to_json(self) -> JSON:
        """The JSON the journal keeps, the CLI shows and the output identities hash (module doc)."""
        out: JSON = {
            "status": self.status,
            "missing_views": list(self.missing_views),
            "breasts": {side: b.to_json() for side, b in self.breasts.items()},
            "disagreements": [d.to_json() for d in self.disagreements],
            "report": None if self.report is None else self.report.to_json(),
        }
        if self.relations is not None:
            out["relations"] = [list(t) for t in self.relations]
        out["models"] = dict(self.models)
        out["preliminary"] = self.preliminary
        if self.localization is not None:
            out["localization"] = self.localization.to_json()
        if self.marks is not None:
            out["marks"] = [m.to_json() for m in self.marks]
        if self.lesion_maps is not None:
            out["lesion_maps"] = {p: m.to_json() for p, m in self.lesion_maps.items()}
        if self.timings is not None:
            out["timings"] = dict(self.timings)
        if self.missing_why is not None:
            out["missing_why"] = dict(self.missing_why)
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.replaces is not None:
            out["replaces"] = {kind: link.to_json() for kind, link in self.replaces.items()}
        if self.documents is not None:
            out["documents"] = {kind: doc.to_json() for kind, doc in self.documents.items()}
        return out


__all__ = ["Breast", "BreastReport", "CadMark", "ClassifierFinding", "ClassifierOutput", "Disagreement",
           "DocumentRef", "JSON", "LesionMap", "Localization", "MessageRef", "ORU_KIND", "OutputRef", "ReportFinding",
           "ReportSections", "SIDES", "StudyResult", "output_ref"]

"""Node configuration: one TOML file plus ``MAMMO_NODE_...`` environment overrides.

The key names are a contract with outside tooling (deployment scripts, monitoring), so they
are declared here once and validated at start. Every error names the offending key, e.g.
``dicom.port: Input should be less than or equal to 65535 (got 70000)``.

Precedence, highest first: environment (``MAMMO_NODE_DICOM__PORT=11113``; nested keys are
joined with ``__``, lists are JSON), then the TOML file, then the defaults below.
Relative paths (``node.data_dir``, TLS files) are resolved against the working directory.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MAMMO_NODE_"


class ConfigError(Exception):
    """The configuration is invalid; the message lists every bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSection(_Section):
    """Where the node keeps its data, and the safety margins around it."""

    data_dir: Path = Path("var")
    # Refuse new instances ("out of resources") when free space on data_dir drops below this.
    min_free_mb: int = Field(default=1024, ge=0)
    # fsync every received file and its directory before acknowledging; turn off only for tests.
    fsync: bool = True
    # Name studies by Study Instance UID in logs. Off: short study keys (s-1a2b3c4d5e). Patient
    # names and IDs are never logged either way.
    log_phi: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TLSSection(_Section):
    """DICOM TLS for the listener (PS3.15 BCP 195 style: TLS 1.2+, certificate checks)."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _files_present_when_enabled(self) -> "TLSSection":
        if not self.enabled:
            return self
        missing = [name for name in ("cert", "key") if getattr(self, name) is None]
        if self.require_client_cert and self.ca is None:
            missing.append("ca")
        if missing:
            raise ValueError(
                "TLS is enabled but " + ", ".join(f"dicom.tls.{m}" for m in missing)
                + " not set (ca is needed to verify client certificates when require_client_cert = true)"
            )
        return self


def _valid_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or len(stripped) > 16 or "\\" in stripped or not stripped.isprintable():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return stripped


class DicomSection(_Section):
    """The DICOM listener (SCP) and its association policy."""

    ae_title: str = "MAMMO_NODE"
    port: int = Field(default=11112, ge=1, le=65535)
    bind: str = "0.0.0.0"
    allowed_calling_aets: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1, le=1000)
    # Largest PDU we announce. Bigger PDUs mean fewer Python-level reads per image; 0 = unlimited.
    max_pdu_size: int = Field(default=1048576, ge=0)
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)
    # A deflated data set may inflate to at most this much (a deflate bomb is refused before it
    # is read); a few times the largest mammogram (about 40 MB).
    max_inflated_mb: int = Field(default=160, ge=1)
    # Compressed transfer syntax families whose first frame is decoded before an image is
    # acknowledged (node.dicom.decode); empty: only the codestream header and end marker are
    # checked. A full-size decode costs several times the rest of the receive path (bench.ingest).
    decode_first_frame: list[Literal["jpeg", "jpeg-ls", "jpeg2000", "rle"]] = Field(default_factory=list)
    tls: TLSSection = Field(default_factory=TLSSection)

    @field_validator("ae_title")
    @classmethod
    def _valid_own_aet(cls, value: str) -> str:
        return _valid_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _valid_aets(cls, values: list[str]) -> list[str]:
        return [_valid_ae_title(v) for v in values]

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)")
        return values

    @field_validator("bind")
    @classmethod
    def _valid_bind(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if value != "localhost":
                raise ValueError(f"{value!r} is not an IP address to bind to")
        return value


class AssemblySection(_Section):
    """When a study counts as complete (see node.assembly)."""

    settle_seconds: float = Field(default=2.0, ge=0)
    # Close a study release_grace_seconds after the one association that delivered all of its images,
    # the four views among them, is released (A-RELEASE, not an abort), instead of settle_seconds
    # after its last image. A study sent over several associations, or over one still open, settles.
    close_on_release: bool = True
    release_grace_seconds: float = Field(default=0.2, ge=0)
    quiet_seconds: float = Field(default=120.0, gt=0)
    deadline_seconds: float = Field(default=3600.0, gt=0)
    incomplete_policy: Literal["report", "partial", "skip"] = "report"
    # An image whose laterality/view attributes contradict each other: kept as an extra that
    # serves no position ("extra"), or refused at receive with A900 and quarantined ("refuse").
    view_conflicts: Literal["extra", "refuse"] = "extra"
    # For Processing images fill no screening position (the models are trained on For
    # Presentation images): a position only they fill is missing, and the result says why.
    accept_for_processing: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "AssemblySection":
        if self.deadline_seconds < self.quiet_seconds:
            raise ValueError("assembly.deadline_seconds must be >= assembly.quiet_seconds")
        return self


class InferenceSection(_Section):
    """How models run (node.inference): providers in order of preference, threads, precision."""

    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    intra_op_threads: int = Field(default=0, ge=0)  # 0 = one per core (ONNX Runtime's choice)
    precision: Literal["auto", "fp32", "fp16"] = "auto"  # auto: fp16 graphs on a GPU, fp32 on CPU
    num_beams: int | None = Field(default=None, ge=1, le=16)  # None: the package's setting
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)
    # Speculative runs: preprocess and run both models on a study whose four views are present while
    # it still settles; the result is kept only if the study closes with the same selected images.
    # At most this many at once (0: off); one starts only while no closed study waits or is processed.
    speculative_runs: int = Field(default=1, ge=0, le=8)


class ResultsSection(_Section):
    """Per field, which source a breast's reported value comes from where both the generated report
    and the classifier state one (docs/results.md). "package": the choice the active MammoRG
    package records from its validation figures (``reporting`` in its manifest), else "report"."""

    density_source: Literal["package", "report", "classifier"] = "package"
    birads_source: Literal["package", "report", "classifier"] = "package"
    # CAD marks from a VersaMammo package with a lesion map (node/marks.py): a lesion-map peak at or
    # above this probability is a mark; None: the package's ``localization.mark_threshold``.
    mark_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    max_marks_per_image: int = Field(default=3, ge=0, le=20)


class DestinationTLS(_Section):
    """TLS for the associations we open to one destination (results carry patient data).

    The server is verified by default: against ``ca`` when given, else the system trust store,
    and its certificate must name ``host`` (DNS name or IP address in subjectAltName) unless
    ``check_hostname`` is off (it is moot with ``verify_server`` off). ``cert``/``key`` present our client certificate to PACS that
    require one.
    """

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify_server: bool = True
    check_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> "DestinationTLS":
        if (self.cert is None) != (self.key is None):
            raise ValueError("outputs.dicom.tls: cert and key go together (both or neither)")
        return self


class DicomDestination(_Section):
    """One PACS (or workstation) that receives our SRs by C-STORE."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # "gsps": a Grayscale Softcopy Presentation State per source image with the CAD marks, for PACS
    # that draw no SR marks; "heatmap_sc": a Secondary Capture per source image with the lesion map
    # and marks burnt in, labelled derived / not for diagnosis (both made only where the VersaMammo
    # package has a lesion map: docs/dicom-sr.md)
    reports: list[Literal["tid1500", "tid4000", "gsps", "heatmap_sc"]] = Field(
        default_factory=lambda: ["tid1500"], min_length=1)
    # The SOP class of the TID 1500 SR for this destination: IHE AIR's Comprehensive 3D SR, or
    # Comprehensive / Enhanced SR for a PACS that does not store it (docs/dicom-sr.md).
    tid1500_sop_class: Literal["comprehensive3d", "comprehensive", "enhanced"] = "comprehensive3d"
    calling_ae_title: str | None = None  # None: the node's own dicom.ae_title
    timeout: float = Field(default=30.0, gt=0)  # association, DIMSE and network timeout
    # Keep the association open this long after the last send, for the next study's SRs (0: release
    # after each batch, as before).
    keep_open_seconds: float = Field(default=10.0, ge=0, le=600)
    tls: DestinationTLS = Field(default_factory=DestinationTLS)

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _valid_aet(cls, value: str | None) -> str | None:
        return None if value is None else _valid_ae_title(value)


def _valid_hd(value: str) -> str:
    """HL7 HD components must not contain the encoding characters."""
    if not value or any(c in value for c in "|^~\\&\r\n") or len(value) > 180:
        raise ValueError(f"{value!r} is not a valid HL7 application/facility name (no | ^ ~ \\ &, 1-180 chars)")
    return value


class HL7Output(_Section):
    """The RIS that receives ORU^R01 over MLLP."""

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "MAMMO_NODE"
    sending_facility: str = "RADIOLOGY"
    receiving_application: str = "RIS"
    receiving_facility: str = "HOSPITAL"
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)  # waiting for the ACK
    # Validate every message with hl7apy STRICT before sending it (0.1-0.2 s of CPU each). The test
    # suite validates every form of message we build; turn on to check unusual data in production.
    validate_messages: bool = False
    # "ai_result": the ORU is a distinct AI result (its own OBR-4 service_id and a filler order number
    # from the node) linked to the exam order (OBR-29); "exam_order": the old shape, filed on the
    # exam's own order (ORC/OBR-2/3 = accession). docs/hl7-interface.md.
    order_mode: Literal["ai_result", "exam_order"] = "ai_result"
    service_id: str = "AIMAMMO^AI mammography analysis^99MAMMO"  # OBR-4 (code^text^system), ai_result
    # OBR-4 in exam_order mode when the images have no ProcedureCodeSequence (text: StudyDescription).
    exam_service_id: str = "MGSCREEN^Screening mammography, bilateral^99MAMMO"
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11: production, training, debugging
    # The zone of every HL7 timestamp (MSH-7, ORC-9, OBR-22, OBX-19, and OBR-7 when the images give
    # no offset): "local" (the node's, daylight saving included), "UTC", a fixed offset "+0530", or
    # an IANA name "Europe/Berlin". Every timestamp carries its offset (docs/hl7-interface.md).
    timezone: str = "local"

    @field_validator("sending_application", "sending_facility", "receiving_application", "receiving_facility")
    @classmethod
    def _valid_names(cls, value: str) -> str:
        return _valid_hd(value)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        if value in ("local", "UTC") or re.fullmatch(r"[+-](0\d|1[0-4])[0-5]\d", value):
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
            raise ValueError(f"{value!r} is not a time zone: \"local\", \"UTC\", an offset like \"+0100\" "
                             "or an IANA name like \"Europe/Berlin\"") from None
        return value

    @field_validator("service_id", "exam_service_id")
    @classmethod
    def _valid_service(cls, value: str) -> str:
        parts = value.split("^")
        if (len(parts) != 3 or not parts[0].strip() or not parts[2].strip()
                or any(c in value for c in "|~\\&\r\n") or len(value) > 250):
            raise ValueError(f"{value!r} is not an HL7 coded value code^text^system (no | ~ \\ &)")
        return value


class OutputsSection(_Section):
    """Where results go: any number of DICOM destinations, at most one RIS."""

    dicom: list[DicomDestination] = Field(default_factory=list)
    hl7: HL7Output | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> "OutputsSection":
        names = [d.name for d in self.dicom]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError("outputs.dicom names must be unique: " + ", ".join(dupes))
        if "hl7" in names:
            raise ValueError("outputs.dicom name 'hl7' is reserved for the RIS destination")
        return self


class OutboxSection(_Section):
    """Delivery retries (node.outbox): exponential backoff with jitter, then a dead letter."""

    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_seconds: float = Field(default=5.0, gt=0)  # first delay; doubles each attempt, +-25 % jitter
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0)  # how often re-queued rows (CLI) are looked for


class HttpSection(_Section):
    """Operations endpoint (node.http_api): /metrics, /healthz, /readyz."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(default=9180, ge=0, le=65535)  # 0: any free port (tests)


class Settings(BaseSettings):
    """The whole effective configuration of one node."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    node: NodeSection = Field(default_factory=NodeSection)
    dicom: DicomSection = Field(default_factory=DicomSection)
    assembly: AssemblySection = Field(default_factory=AssemblySection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    results: ResultsSection = Field(default_factory=ResultsSection)
    outputs: OutputsSection = Field(default_factory=OutputsSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    http: HttpSection = Field(default_factory=HttpSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init values), which beats the defaults.
        return (env_settings, init_settings)

    # Derived locations under data_dir: one place so every component agrees on the layout.
    @property
    def data_dir(self) -> Path:
        return self.node.data_dir.resolve()

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite3"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "spool" / ".incoming"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    @property
    def trt_cache_dir(self) -> Path:
        return self.data_dir / "trt-cache"

    def session_settings(self) -> "SessionSettings":
        """ONNX Runtime session settings from ``[inference]``."""
        from node.inference.session import SessionSettings

        return SessionSettings(providers=tuple(self.inference.providers),
                               intra_op_threads=self.inference.intra_op_threads, trt_cache=self.trt_cache_dir)

    def effective(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data (what `config check` prints)."""
        return self.model_dump(mode="json")


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
            continue
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        suffix = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        lines.append(f"  {key}: {message}{suffix}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None) -> Settings:
    """Read ``path`` (TOML; optional) and the environment into validated :class:`Settings`.

    Raises :class:`ConfigError` with one line per bad key.
    """
    data: dict[str, Any] = {}
    source = "defaults + environment"
    if path is not None:
        path = Path(path)
        source = f"{path} + environment"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None

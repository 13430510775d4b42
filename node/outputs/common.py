"""Wording and identities every output shares (SRs and HL7 alike), so they never drift apart."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Mapping

from node.study_result import StudyResult

MANUFACTURER = "mammo-node"


def _software_version() -> str:
    try:
        return metadata.version("mammo-node")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


SOFTWARE_VERSION = _software_version()
DEVICE_NAME = "mammo-node"
# Said in every output: the SR's text, the HL7 NTE segment, the SeriesDescription.
DISCLAIMER = ("Preliminary AI output (mammo-node: VersaMammo classifier and MammoRG report generator). "
              "Not verified by a radiologist; not for diagnosis without review.")
SERIES_DESCRIPTION = {"tid1500": "AI RESULT (PRELIMINARY)", "tid4000": "AI CAD SR (PRELIMINARY)"}
# Series numbers of our output series: high, so they sort after the modality's own series.
SERIES_NUMBER = {"tid1500": 9501, "tid4000": 9502}
INSTANCE_NUMBER = 1

# The SOP classes the TID 1500 SR can be sent in (``[[outputs.dicom]] tid1500_sop_class``): IHE AIR
# names Comprehensive 3D SR; a PACS that does not store it gets Comprehensive SR or Enhanced SR, which
# allow every value type and relationship our content uses (no SCOORD3D, no by-reference relations;
# docs/dicom-sr.md). Each class is an output kind of its own ("tid1500" keeps its name for the
# default), so each has its own document UIDs, outbox rows and predecessor chain.
TID1500_SOP_CLASSES = {"comprehensive3d": "1.2.840.10008.5.1.4.1.1.88.34",
                       "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
                       "enhanced": "1.2.840.10008.5.1.4.1.1.88.22"}
TID1500_KINDS = {"comprehensive3d": "tid1500", "comprehensive": "tid1500-comprehensive",
                 "enhanced": "tid1500-enhanced"}


def report_family(kind: str) -> str:
    """The report an output kind is a rendering of ("tid1500-enhanced" -> "tid1500"): series
    number, description and content follow the family, UIDs and predecessors the kind."""
    return kind.split("-", 1)[0]


class NotApplicable(Exception):
    """This output kind has nothing to say for this result (e.g. an SR when no model ran because
    views were missing): it is not produced, and the other outputs still are."""


def model_label(versions: Mapping[str, str], kind: str) -> tuple[str, str]:
    """("versamammo-demo", "1.0.0") from the result's ``{"versamammo": "versamammo-demo@1.0.0"}``."""
    value = versions.get(kind, f"{kind}@unknown")
    name, _, version = value.partition("@")
    return name, version or "unknown"


# The Device Observer UID / Device UID of this installation: made once, kept in the data
# directory (so it survives upgrades and restarts and differs between installations), shown by
# `mammo-node status`.
DEVICE_UID_FILE = "device-uid"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def installation_device_uid(data_dir: Path, *, create: bool = True, fsync: bool = True) -> str | None:
    """This installation's device UID (``<data_dir>/device-uid``), made on first use when ``create``
    (None when it does not exist yet and ``create`` is false). A file that does not hold a valid
    UID is an error, never silently replaced: SRs already sent name the device by it."""
    path = Path(data_dir) / DEVICE_UID_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        import os
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".device-uid.")
        try:
            os.write(fd, f"2.25.{uuid.uuid4().int}\n".encode())
            if fsync:
                os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # atomic and exclusive: a concurrent first start keeps one UID
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        if fsync:
            from node.fsutil import fsync_dir

            fsync_dir(path.parent)
        return installation_device_uid(data_dir, create=False)
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{path} does not hold a valid UID ({value[:70]!r}); restore it from a backup")
    return value


def report_language(result: StudyResult) -> tuple[str, str]:
    """(RFC 5646 tag, meaning) of the report text: Chinese when it has CJK characters, else English
    (what the report generator writes); en-US when there is no report."""
    text = " ".join(result.report.texts()) if result.report is not None else ""
    if re.search(r"[\u3400-\u9fff\uf900-\ufaff]", text):
        return "zh", "Chinese"
    return "en-US", "English (United States)"


def completion(result: StudyResult) -> tuple[str, str | None]:
    """(Completion Flag, Completion Flag Description) of both SRs. PS3.3 C.17.2: the flag is about
    the content (are all the observations there?), not about signing (Verification Flag): COMPLETE
    for a complete result, PARTIAL with the missing views otherwise."""
    status = result.status
    if status == "complete":
        return "COMPLETE", None
    missing = ", ".join(result.missing_views)
    text = (f"views missing ({missing}); no model ran" if status == "incomplete"
            else f"views missing ({missing}); processed with the views present")
    return "PARTIAL", text[:64]


def utc(ts: float) -> datetime:
    """A journal timestamp (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


__all__ = ["DEVICE_NAME", "DEVICE_UID_FILE", "completion", "installation_device_uid", "report_language", "DISCLAIMER", "NotApplicable", "INSTANCE_NUMBER", "MANUFACTURER", "SERIES_DESCRIPTION",
           "SERIES_NUMBER", "SOFTWARE_VERSION", "TID1500_KINDS", "TID1500_SOP_CLASSES", "model_label", "report_family",
           "utc"]

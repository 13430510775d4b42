"""Wording and identities every output shares (SRs and HL7 alike), so they never drift apart."""
from __future__ import annotations

from datetime import datetime, timezone

from importlib import metadata

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


class NotApplicable(Exception):
    """This output kind has nothing to say for this result (e.g. an SR when no model ran because
    views were missing): it is not produced, and the other outputs still are."""


def model_label(versions: dict[str, str], kind: str) -> tuple[str, str]:
    """("versamammo-demo", "1.0.0") from the result's ``{"versamammo": "versamammo-demo@1.0.0"}``."""
    value = versions.get(kind, f"{kind}@unknown")
    name, _, version = value.partition("@")
    return name, version or "unknown"


def utc(ts: float) -> datetime:
    """A journal timestamp (seconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


__all__ = ["DEVICE_NAME", "DISCLAIMER", "NotApplicable", "INSTANCE_NUMBER", "MANUFACTURER", "SERIES_DESCRIPTION",
           "SERIES_NUMBER", "SOFTWARE_VERSION", "model_label", "utc"]

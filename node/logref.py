"""How logs refer to a study without leaking patient data.

By default a study appears in logs as a short key, ``s-`` plus 10 hex digits of the SHA-256 of
its Study Instance UID: stable (``studies show`` accepts it) but not identifying. With
``node.log_phi = true`` logs carry the UID itself.

The libraries log values from the data sets they read: pydicom's warnings quote invalid
values ("Invalid value for VR UI: '1.2.3...'"), pynetdicom's errors quote command UIDs.
:func:`install_library_filter` puts a filter on their loggers (and routes Python warnings
into logging) that withholds such values unless ``node.log_phi`` is set.
"""
from __future__ import annotations

import hashlib
import logging
import re

_log_phi = False


def set_log_phi(enabled: bool) -> None:
    """Chosen once at start from ``node.log_phi``."""
    global _log_phi
    _log_phi = bool(enabled)


def study_key(study_uid: str) -> str:
    """The short, non-identifying key of a study."""
    return "s-" + hashlib.sha256(study_uid.encode()).hexdigest()[:10]


def study_ref(study_uid: str) -> str:
    """What a log line should say for this study."""
    return study_uid if _log_phi else study_key(study_uid)


# Instance UIDs (standard DICOM UIDs under 1.2.840.10008 name SOP classes and transfer syntaxes and
# are kept), and quoted values that hold digits or a PN "^" (attribute names in quotes are kept).
_UID = re.compile(r"(?<![\w.])(?!1\.2\.840\.10008\.)\d+(?:\.\d*){3,}[\w.]*")
_QUOTED = re.compile(r"'([^']*[0-9^][^']*)'|\"([^\"]*[0-9^][^\"]*)\"")


def redact(text: str) -> str:
    """``text`` with instance UIDs and quoted data values withheld."""
    text = _QUOTED.sub(lambda m: "'<value withheld>'" if not _standard(m.group(1) or m.group(2)) else m.group(0),
                       text)
    return _UID.sub("<uid withheld>", text)


def _standard(value: str) -> bool:
    return value.startswith("1.2.840.10008.") and re.fullmatch(r"[0-9.]+", value) is not None


class LibraryPhiFilter(logging.Filter):
    """Rewrites library log records (message and traceback) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _log_phi:
            return True
        try:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        except Exception:  # a log filter must never stop the log line
            pass
        return True


_LIBRARY_LOGGERS = ("pydicom", "py.warnings", "pynetdicom")
_filter = LibraryPhiFilter()


def install_library_filter() -> None:
    """Filter pydicom's and pynetdicom's loggers (each module's logger) and Python warnings."""
    logging.captureWarnings(True)
    names = set(_LIBRARY_LOGGERS) | {
        name for name in logging.root.manager.loggerDict
        if any(name.startswith(prefix + ".") for prefix in _LIBRARY_LOGGERS)
    }
    for name in names:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)

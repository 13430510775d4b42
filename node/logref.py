"""How logs refer to a study without leaking patient data.

By default a study appears in logs as a short key, ``s-`` plus 10 hex digits of the SHA-256 of
its Study Instance UID: stable (``studies show`` accepts it) but not identifying. With
``node.log_phi = true`` logs carry the UID itself.
"""
from __future__ import annotations

import hashlib

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

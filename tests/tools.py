"""Access to the real external peers the tests use (DCMTK, Orthanc, dciodvfy).

Under CI (``CI=true``) a missing tool is a failure, never a skip: the suite must not go
green by silently skipping the tests that matter. On a developer machine without the
tools the tests skip with an explicit reason.
"""
from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Return the path of executable ``name``, failing (CI) or skipping (dev) if absent."""
    path = shutil.which(name)
    if path:
        return path
    message = f"required tool {name!r} is not installed (make test installs it when run as root)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")

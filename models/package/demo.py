"""The demonstration packages' names and version: what ``export.bootstrap`` builds and the node's
``models bootstrap-demo`` looks for in deploy/demo-models/ (node.packages.demo).

Bump ``DEMO_VERSION`` when ``export.bootstrap``'s recipe changes: it is the packages' version and
the bootstrap cache key. Here, not in ``export``, because the node reads it without importing export.
"""
from __future__ import annotations

DEMO_VERSION = "3.2.0"
NAMES: dict[str, str] = {"versamammo": "versamammo-demo", "mammorg": "mammorg-demo"}

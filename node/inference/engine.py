"""Which model versions a study runs with: immutable snapshots of the active packages.

``InferenceEngine.snapshot()`` reads the registry's active set (a small JSON file, renamed
atomically by ``mammo-node models activate/rollback``) and returns the loaded runners for exactly
those versions. A study takes one snapshot when it starts and uses it to the end, so an
activation in the middle of a study changes nothing for it; the next study gets the new
versions, without a restart. Runners are cached per version: switching back and forth does not
reload, and a runner still held by an in-flight study stays alive until that study finishes.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from node.inference.mammorg import MammoRGRunner
from node.inference.session import SessionSettings
from node.inference.versamammo import VersaMammoRunner
from node.packages.registry import ModelRegistry

log = logging.getLogger("mammo_node.inference")


class ModelUnavailable(Exception):
    """No active package of a kind, or the active one failed to load (the study fails, the node goes on)."""


@dataclass(frozen=True)
class ModelSet:
    """The runners one study uses, and their ``NAME@VERSION`` for its results."""

    versions: dict[str, str]
    runners: dict[str, Any] = field(repr=False)

    @property
    def versamammo(self) -> VersaMammoRunner:
        return self._runner("versamammo")

    @property
    def mammorg(self) -> MammoRGRunner:
        return self._runner("mammorg")

    def _runner(self, kind: str) -> Any:
        if kind not in self.runners:
            raise ModelUnavailable(f"no active {kind} package (mammo-node models list / activate)")
        return self.runners[kind]


class InferenceEngine:
    def __init__(self, registry: ModelRegistry, settings: SessionSettings, precision: str = "auto",
                 generation: dict[str, int] | None = None) -> None:
        """``generation``: overrides of the packages' ``num_beams`` / ``max_new_tokens`` (``[inference]``)."""
        self.registry = registry
        self.generation = {k: v for k, v in (generation or {}).items() if v is not None}
        self.settings = settings
        self.precision = precision
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> ModelSet:
        """The active versions now, loaded (first use of a version loads and warms it up)."""
        active = self.registry.active()
        runners = {}
        with self._lock:
            for kind, ref in active.items():
                runners[kind] = self._load(kind, ref)
            # Keep only active versions cached; studies holding older runners keep them alive.
            for ref in [r for r in self._cache if r not in active.values()]:
                del self._cache[ref]
        return ModelSet(versions=dict(active), runners=runners)

    def _load(self, kind: str, ref: str) -> Any:
        if ref in self._cache:
            return self._cache[ref]
        try:
            package = self.registry.get(ref)
            if kind == "versamammo":
                runner: Any = VersaMammoRunner(package.root, package.manifest, self.settings, self.precision)
            else:
                runner = MammoRGRunner(package.root, package.manifest, self.settings)
                if self.generation:
                    runner.defaults = replace(runner.defaults, **self.generation)
        except Exception as exc:
            raise ModelUnavailable(f"active {kind} package {ref} failed to load: {type(exc).__name__}: {exc}") from exc
        log.info("loaded %s package %s", kind, ref)
        self._cache[ref] = runner
        return runner

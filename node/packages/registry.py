"""The installed model packages of one node and which version of each kind is active.

Layout under ``<data_dir>/models/``::

    packages/<name>@<version>/   installed packages (read-only once installed)
    state.json                   {"active": {kind: ref}, "previous": {kind: [ref, ...]}, "log": [...]}
    .lock                        serialises concurrent admin commands

Every change to ``state.json`` is written to a temporary file, fsynced and renamed over the old
one, so a reader (the running node) sees the old state or the new one, never half of either,
and a crash mid-command leaves a consistent state. Installation checks everything before the
package becomes visible: it is unpacked into a staging directory, its sha256s, manifest and
golden vectors are checked there, and only then is it renamed into ``packages/``.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from node.fsutil import fsync_dir, write_atomic
from node.inference.session import SessionSettings
from models.package.manifest import KINDS, MANIFEST, Manifest, PackageError, check_files, read_manifest


@dataclass(frozen=True)
class InstalledPackage:
    ref: str
    root: Path
    manifest: Manifest


class ModelRegistry:
    """Install, verify, activate, roll back and remove packages under ``models_dir``."""

    def __init__(self, models_dir: Path, settings: SessionSettings | None = None) -> None:
        self.dir = Path(models_dir)
        self.packages_dir = self.dir / "packages"
        self.state_path = self.dir / "state.json"
        self.settings = settings or SessionSettings(providers=("cpu",))

    # ------------------------------------------------------------------ reading
    def state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        state.setdefault("active", {})
        state.setdefault("previous", {})
        state.setdefault("log", [])
        return state

    def active(self) -> dict[str, str]:
        """``{kind: ref}`` of the active packages (a kind without one is absent)."""
        return dict(self.state()["active"])

    def installed(self) -> list[InstalledPackage]:
        if not self.packages_dir.is_dir():
            return []
        out = []
        for root in sorted(self.packages_dir.iterdir()):
            if root.is_dir() and not root.name.startswith("."):
                try:
                    out.append(InstalledPackage(root.name, root, read_manifest(root)))
                except PackageError:
                    continue  # not ours or damaged: `verify` names the problem
        return out

    def get(self, ref: str) -> InstalledPackage:
        if "@" not in ref:
            matches = [p for p in self.installed() if p.manifest.name == ref]
            if len(matches) == 1:
                return matches[0]
            known = ", ".join(p.ref for p in self.installed()) or "none"
            raise PackageError(f"name the version: {ref}@VERSION (installed: {known})")
        root = self.packages_dir / ref
        if not (root / MANIFEST).is_file():
            known = ", ".join(p.ref for p in self.installed()) or "none"
            raise PackageError(f"{ref} is not installed (installed: {known})")
        return InstalledPackage(ref, root, read_manifest(root))

    # ------------------------------------------------------------------ checks
    def check(self, root: Path, manifest: Manifest) -> list[str]:
        """Files against the manifest, then the golden vectors on this machine's providers."""
        problems = check_files(root, manifest)
        if problems:
            return problems
        from node.packages.golden import check_golden

        try:
            return check_golden(root, manifest, self.settings)
        except Exception as exc:  # a graph that does not load is a failed check, not a crash
            return [f"golden vectors could not run: {type(exc).__name__}: {exc}"]

    def verify(self, ref: str) -> tuple[InstalledPackage, list[str]]:
        package = self.get(ref)
        return package, self.check(package.root, package.manifest)

    # ------------------------------------------------------------------ changes
    def install(self, source: Path, activate: bool = False) -> InstalledPackage:
        """Check and install a package directory or .tar; raise PackageError with every reason."""
        source = Path(source)
        if not source.exists():
            raise PackageError(f"{source}: no such file or directory")
        self.packages_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.packages_dir))
            try:
                root = self._unpack(source, staging)
                manifest = read_manifest(root)
                target = self.packages_dir / manifest.ref
                if target.exists():
                    same = read_manifest(target).files == manifest.files
                    raise PackageError(f"{manifest.ref} is already installed"
                                       + (" (identical)" if same else " with different contents; "
                                          "give the new package a new version"))
                problems = self.check(root, manifest)
                if problems:
                    raise PackageError(f"{manifest.ref} refused: " + "; ".join(problems))
                os.replace(root, target)
                fsync_dir(self.packages_dir)
                self._log("install", manifest.kind, manifest.ref)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            package = InstalledPackage(manifest.ref, target, manifest)
            if activate:
                self._activate(package)
            return package

    def activate(self, ref: str) -> tuple[str | None, InstalledPackage]:
        """Make ``ref`` the active package of its kind; returns (previously active ref, package)."""
        with self._lock():
            package = self.get(ref)
            return self._activate(package), package

    def rollback(self, kind: str | None = None) -> tuple[str, str]:
        """Re-activate the previously active package of ``kind`` (default: the kind changed last).

        Returns (the ref rolled back from, the ref now active).
        """
        with self._lock():
            state = self.state()
            if kind is None:
                changed = [e["kind"] for e in state["log"] if e["action"] in ("activate", "rollback")]
                if not changed:
                    raise PackageError("nothing has been activated yet: there is nothing to roll back")
                kind = changed[-1]
            if kind not in KINDS:
                raise PackageError(f"kind must be one of {KINDS}, not {kind!r}")
            stack = state["previous"].get(kind, [])
            if not stack:
                raise PackageError(f"no previous {kind} version to roll back to")
            target = stack.pop()
            if not (self.packages_dir / target / MANIFEST).is_file():
                raise PackageError(f"the previous {kind} version {target} is no longer installed")
            current = state["active"].get(kind)
            state["active"][kind] = target
            self._write_state(state, "rollback", kind, target)
            return current or "-", target

    def remove(self, ref: str) -> InstalledPackage:
        """Delete an installed package; the active one of its kind is refused."""
        with self._lock():
            package = self.get(ref)
            state = self.state()
            if state["active"].get(package.manifest.kind) == package.ref:
                raise PackageError(f"{package.ref} is the active {package.manifest.kind} package; activate "
                                   "another version (or roll back) before removing it")
            for stack in state["previous"].values():
                while package.ref in stack:
                    stack.remove(package.ref)
            graveyard = self.packages_dir / f".removed-{package.ref}-{time.time_ns()}"
            os.replace(package.root, graveyard)
            self._write_state(state, "remove", package.manifest.kind, package.ref)
            shutil.rmtree(graveyard, ignore_errors=True)
            return package

    # ------------------------------------------------------------------ internals
    def _activate(self, package: InstalledPackage) -> str | None:
        state = self.state()
        kind = package.manifest.kind
        current = state["active"].get(kind)
        if current == package.ref:
            return current
        if current is not None:
            state["previous"].setdefault(kind, []).append(current)
        state["active"][kind] = package.ref
        self._write_state(state, "activate", kind, package.ref)
        return current

    def _log(self, action: str, kind: str, ref: str) -> None:
        state = self.state()
        self._write_state(state, action, kind, ref)

    def _write_state(self, state: dict[str, Any], action: str, kind: str, ref: str) -> None:
        state["log"] = (state["log"] + [{"action": action, "kind": kind, "ref": ref,
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}])[-200:]
        write_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True).encode("utf-8"))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _unpack(source: Path, staging: Path) -> Path:
        """Copy a directory, or safely extract a .tar (no links, nothing outside), into ``staging``."""
        if source.is_dir():
            root = staging / "package"
            shutil.copytree(source, root)
            return root
        if not tarfile.is_tarfile(source):
            raise PackageError(f"{source}: neither a package directory nor a .tar")
        with tarfile.open(source) as archive:
            members = archive.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise PackageError(f"{source}: member {m.name!r} is not a plain file or directory")
            archive.extractall(staging / "x", filter="data")
        manifests = sorted((staging / "x").rglob(MANIFEST), key=lambda p: len(p.parts))
        if not manifests:
            raise PackageError(f"{source}: the archive holds no {MANIFEST}")
        return manifests[0].parent


"""``manifest.json`` of a model package: what it holds, how to check it, how to read it.

A package is a directory (or a .tar of one) holding ``manifest.json``, the ONNX graphs (and any
external-data files), a tokenizer where needed, and golden vectors. The manifest lists every
other file with its sha256 and size, so a package that was truncated, edited or mixed with
another fails ``check_files`` before anything runs it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "mammo-node/model-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("versamammo", "mammorg")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


class PackageError(Exception):
    """A package is malformed, incomplete or fails its checks; the message says which and why."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"sha256", "bytes"}}`` of every file under ``root`` except the manifest."""
    entries = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest; ``data`` keeps every field (unknown ones included) for display."""

    name: str
    kind: str
    version: str
    files: dict[str, dict[str, Any]]
    data: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        """``NAME@VERSION``, how the CLI names an installed package."""
        return f"{self.name}@{self.version}"

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.data.get("graphs", {})

    @property
    def demonstration(self) -> bool:
        return bool(self.data.get("demonstration", False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Validate the fields the node relies on; raise PackageError naming every problem."""
        problems = []
        if data.get("format") != FORMAT:
            problems.append(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            problems.append(f"format_version {data.get('format_version')!r} is not supported (this node reads "
                            f"{FORMAT_VERSION})")
        name, kind, version = data.get("name"), data.get("kind"), data.get("version")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if kind not in KINDS:
            problems.append(f"kind {kind!r} must be one of {KINDS}")
        if not isinstance(version, str) or not _VERSION.match(version):
            problems.append(f"version {version!r} is not a valid version string")
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            problems.append("files must list every file of the package with its sha256")
            files = {}
        for rel, entry in files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                problems.append(f"file path {rel!r} leaves the package")
            if not isinstance(entry, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
                problems.append(f"file {rel!r} has no valid sha256")
        graphs = data.get("graphs")
        if not isinstance(graphs, dict) or not graphs:
            problems.append("graphs must name the ONNX files")
        else:
            for role, graph in graphs.items():
                if not isinstance(graph, dict) or graph.get("file") not in files:
                    problems.append(f"graph {role!r} names a file that is not listed in files")
        if problems:
            raise PackageError("invalid manifest: " + "; ".join(problems))
        return cls(name=name, kind=kind, version=version, files=files, data=data)


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{root}: no {MANIFEST} (not a model package)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: manifest is not a JSON object")
    return Manifest.from_dict(data)


def check_files(root: Path, manifest: Manifest) -> list[str]:
    """Problems with the files on disk against the manifest (empty list = all present and intact).

    Extra files are a problem too: what runs must be exactly what was exported and checked.
    """
    root = Path(root)
    problems = []
    for rel, entry in sorted(manifest.files.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            problems.append(f"{rel}: size {path.stat().st_size} != {entry['bytes']} in the manifest")
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel}: sha256 does not match the manifest")
    listed = set(manifest.files) | {MANIFEST}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    return problems


def write_manifest(root: Path, data: dict[str, Any]) -> Manifest:
    """Fill ``files`` from what is under ``root`` now, validate, and write ``manifest.json``."""
    root = Path(root)
    data = dict(data)
    data.setdefault("format", FORMAT)
    data.setdefault("format_version", FORMAT_VERSION)
    data["files"] = file_entries(root)
    manifest = Manifest.from_dict(data)
    (root / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest

"""On-disk cache of ``prepare_uint8`` output: decode, window and crop once per image and config.

Why: decoding a compressed full-size mammogram costs 0.1-1 s, and the training loops read
every image every epoch; the 8-bit model-size image is ~0.25 MB. What is stored is everything
up to the resized uint8 image, so the key leaves out what comes after it (mean, std, channels):
one cache entry serves every normalisation.

Key: sha256 over the file identity (resolved path, size and mtime; or the content's sha256 with
``identity="content"``, which survives copies between machines but reads the whole file), the
laterality passed for flipping, the PreprocessConfig minus normalisation, and
PREPROCESS_VERSION. Entries are ``<key>.npy`` + ``<key>.json`` written to temporary names and
renamed into place (the JSON last), so concurrent DataLoader workers and runs never read a
half-written entry; two workers computing the same entry write identical bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from models.preprocess import PREPROCESS_VERSION, PreparedImage, PreprocessConfig, prepare_uint8

NORMALISATION_KEYS = ("mean", "std", "channels")


def geometry_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    """The config keys that change ``prepare_uint8`` output."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NORMALISATION_KEYS}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PreprocessedCache:
    """``get_or_prepare(path, cfg, laterality)``; picklable (a folder name), so workers share it."""

    def __init__(self, root: Path | str, identity: str = "stat") -> None:
        if identity not in ("stat", "content"):
            raise ValueError(f"identity must be 'stat' or 'content', not {identity!r}")
        self.root = Path(root)
        self.identity = identity
        self.hits = 0
        self.misses = 0

    def key(self, path: Path | str, cfg: PreprocessConfig, laterality: str | None = None) -> str:
        path = Path(path).resolve()
        if self.identity == "content":
            ident: dict[str, Any] = {"sha256": _file_sha256(path)}
        else:
            st = path.stat()
            ident = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        payload = {"file": ident, "laterality": laterality, "config": geometry_dict(cfg),
                   "version": PREPROCESS_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def get(self, path: Path | str, cfg: PreprocessConfig, laterality: str | None = None) -> PreparedImage | None:
        npy, meta_path = self._paths(self.key(path, cfg, laterality))
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            image = np.load(npy, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None
        return PreparedImage(image=image, crop_box=tuple(meta["crop_box"]), flipped=bool(meta["flipped"]),
                             source_shape=tuple(meta["source_shape"]), chest_wall=meta.get("chest_wall"))

    def put(self, path: Path | str, cfg: PreprocessConfig, laterality: str | None, prepared: PreparedImage) -> None:
        npy, meta_path = self._paths(self.key(path, cfg, laterality))
        npy.parent.mkdir(parents=True, exist_ok=True)
        meta = {"source": str(Path(path)), "crop_box": list(prepared.crop_box), "flipped": prepared.flipped,
                "source_shape": list(prepared.source_shape), "chest_wall": prepared.chest_wall,
                "config": geometry_dict(cfg), "laterality": laterality, "version": PREPROCESS_VERSION}
        _atomic_write(npy, lambda fh: np.save(fh, np.ascontiguousarray(prepared.image), allow_pickle=False))
        _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode("utf-8")))

    def get_or_prepare(self, path: Path | str, cfg: PreprocessConfig, laterality: str | None = None) -> PreparedImage:
        cached = self.get(path, cfg, laterality)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        prepared = prepare_uint8(pydicom.dcmread(path), cfg, laterality)
        self.put(path, cfg, laterality, prepared)
        return prepared

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "identity": self.identity, "hits": 0, "misses": 0}


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

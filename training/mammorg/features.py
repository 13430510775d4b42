"""The frozen student's tokens of every study, computed once and cached on disk.

The VersaMammo encoder is frozen in every MammoRG stage and the official stages use no image
augmentation, so each view's token grid is a pure function of (student weights, image): caching
it makes the stages cost what the language model costs. The cache file is keyed by the student
checkpoint's content hash and the study list; it stores float16 tokens (N, 4, T, C) and the
present-view mask (N, 4).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import torch

from models.mammorg.config import VIEWS
from models.mammorg.model import view_tokens
from models.preprocess import PreprocessConfig, normalize, prepare_uint8
from models.versamammo.student import VersaMammoStudent
from training.data.cache import PreprocessedCache
from training.mammorg.data import StudyRecord
from training.versamammo.distill.data import student_preprocess_config


def _key(student: VersaMammoStudent, studies: list[StudyRecord], pre: PreprocessConfig, pool: int = 1) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(pre.to_dict(), sort_keys=True).encode())
    if pool != 1:  # unpooled caches keep the key they had before the option existed
        h.update(f"pool={pool}".encode())
    for name, tensor in sorted(student.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([[s.study_id, {k: str(v) for k, v in sorted(s.views.items())}] for s in studies]).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def study_tokens(studies: list[StudyRecord], student: VersaMammoStudent, device: torch.device,
                 cache_dir: Path | None, image_cache: PreprocessedCache | None,
                 batch: int = 16, progress: bool = True,
                 pre: PreprocessConfig | None = None, pool: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, 4, T, C) float16, present (N, 4) bool), from ``cache_dir`` when already computed.

    ``pre``: the images' preprocessing (``models.mammorg.config.preprocess_config``); None = the student's.
    ``pool``: ``MammoRGConfig.vision_pool`` (the grid average-pooled by it, ``view_tokens``).
    """
    pre = pre or student_preprocess_config(student.cfg)
    cache_file = Path(cache_dir) / f"tokens-{_key(student, studies, pre, pool)}.pt" if cache_dir is not None else None
    if cache_file is not None and cache_file.exists():
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        return saved["tokens"], saved["present"]
    cfg = student.cfg
    if cfg.student_grid % pool:
        raise ValueError(f"the student's {cfg.student_grid} x {cfg.student_grid} grid does not pool by {pool}")
    tokens_per_view = (cfg.student_grid // pool) ** 2
    tokens = torch.zeros(len(studies), len(VIEWS), tokens_per_view, cfg.student_dim, dtype=torch.float16)
    present = torch.zeros(len(studies), len(VIEWS), dtype=torch.bool)
    jobs = [(i, v, s.views[key]) for i, s in enumerate(studies) for v, key in enumerate(VIEWS) if key in s.views]
    student = student.to(device).eval()
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("student tokens", total=len(jobs))
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            images = []
            for _, _, path in chunk:
                laterality = None
                prepared = (image_cache.get_or_prepare(path, pre, laterality) if image_cache is not None
                            else prepare_uint8(pydicom.dcmread(path), pre, laterality))
                images.append(normalize(prepared.image, pre))
            flat = view_tokens(student, torch.from_numpy(np.stack(images)).to(device), pool).to(torch.float16).cpu()
            for (i, v, _), t in zip(chunk, flat):
                tokens[i, v] = t
                present[i, v] = True
            bar.advance(task, len(chunk))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"tokens": tokens, "present": present}, tmp)
        tmp.replace(cache_file)
    return tokens, present

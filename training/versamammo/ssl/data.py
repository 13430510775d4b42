"""Images and batches for stage 1.

Image sources give ``uint8`` grey images already squashed to 256x256 (the official dataset
opens every PNG and resizes it to 256x256, bilinear, aspect ratio not kept, before the
multi-crop augmentation):

* :func:`build_image_source` reads the run's records (``training.data.records.load_records``)
  and prepares each image with ``models.preprocess.prepare_uint8(ds, PreprocessConfig(size=(256, 256)))``
  (the project's one preprocessing: window, breast crop, squash), lazily, one image per access
  and through ``training.data.cache.PreprocessedCache`` when ``data.cache_dir`` is set, so it
  scales to the full pretraining set;
* :func:`phantom_image_source` prepares phantom studies in memory (tests, probes).

Batches are a pure function of ``(seed, iteration, rank)``: :class:`SeededBatchSampler` walks an
endless stream of global sample positions; position ``p`` belongs to data pass ``p // n`` and
is image ``perm_pass[p % n]`` of a seeded permutation, with its own augmentation seed.
Iteration ``it`` of rank ``r`` takes positions ``(it * world + r) * batch + [0, batch)``, so a
resumed run (start_iteration > 0) gets exactly the batches the uninterrupted run would have,
independent of DataLoader workers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from training.versamammo.ssl.augment import MultiCropAugmentation
from training.config import TrainConfig

log = logging.getLogger(__name__)

SSL_IMAGE_SIZE = (256, 256)


# ------------------------------------------------------------------------------ image sources
def ssl_preprocess_config() -> Any:
    """``prepare_uint8`` settings for stage 1: the project's preprocessing squashed to 256x256."""
    from models.preprocess import PreprocessConfig

    return PreprocessConfig(size=SSL_IMAGE_SIZE)


class ImageSource:
    """Random access to ``uint8`` grey images and their labels (picklable for workers)."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def label(self, i: int, target: str = "density") -> int | None:
        return None


@dataclass
class ArrayImageSource(ImageSource):
    """Images held in memory (tests, probes on small sets)."""

    images: list[np.ndarray]
    labels: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def label(self, i: int, target: str = "density") -> int | None:
        value = self.labels[i].get(target)
        return None if value is None else int(value)


class RecordImageSource(ImageSource):
    """``training.data.records`` records, prepared on access (through the preprocessed cache when set)."""

    def __init__(self, records: Sequence[Any], cache_dir: Path | str | None = None) -> None:
        from training.data.cache import PreprocessedCache
        from training.data.datasets import MammoImageDataset

        cache = PreprocessedCache(cache_dir) if cache_dir is not None else None
        self.records = list(records)
        self.dataset = MammoImageDataset(self.records, ssl_preprocess_config(), cache=cache)

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> np.ndarray:
        return self.dataset.prepared(i).image

    def label(self, i: int, target: str = "density") -> int | None:
        value = getattr(self.records[i], target)
        return None if value is None else int(value)


def build_image_source(cfg: TrainConfig, split: str | None = "train") -> RecordImageSource:
    """The images of ``split`` (None: all) of the run's data set (``training.data.records``).

    Stage 1 uses the training split only, as the official code does (``split == "train"``).
    """
    from training.data.records import load_records

    records = load_records(cfg.data)
    if split is not None:
        records = [r for r in records if r.split == split]
    if not records:
        raise ValueError(f"no {split or ''} images in the configured data set")
    return RecordImageSource(records, cfg.data.cache_dir)


def phantom_image_source(seed: int, studies: Sequence[int], size: str = "small") -> ArrayImageSource:
    """Four views of each phantom study, prepared in memory (no files), with density labels."""
    from models.preprocess import prepare_uint8
    from phantoms.study import VIEW_KEYS, PhantomOptions, generate_study
    from models.package.labels import density_index

    pcfg = ssl_preprocess_config()
    images, labels = [], []
    for index in studies:
        study = generate_study(seed, int(index), PhantomOptions(size=size))
        for key in VIEW_KEYS:
            images.append(prepare_uint8(study.views[key], pcfg, key[0]).image)
            breast = study.labels["breasts"][key[0]]
            labels.append({"density": density_index(breast["density"]), "study": int(index), "view": key})
    return ArrayImageSource(images, labels)


# ------------------------------------------------------------------------------- batching
class SSLDataset(Dataset):
    """``dataset[(index, seed)]`` -> the multi-crop views of image ``index`` drawn with ``seed``."""

    def __init__(self, source: ImageSource, augmentation: MultiCropAugmentation) -> None:
        self.source = source
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        g = torch.Generator().manual_seed(int(seed))
        views = self.augmentation(self.source.image(int(index)), g)
        return {**views, "seed": int(seed), "index": int(index)}

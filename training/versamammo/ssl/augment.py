"""Multi-crop augmentation of stage 1 (DINOv2 ``DataAugmentationDINO`` as VersaMammo runs it).

Input: one grey ``uint8`` image ``(H, W)`` (the official pipeline first squashes every image
to 256x256, see :mod:`training.versamammo.ssl.data`). Output: ``2`` global crops of
``teacher_global`` pixels and ``local_crops_number`` local crops of ``teacher_local`` pixels,
each a normalised float tensor ``(3, S, S)``.

Per crop, in the official order:

* geometry: RandomResizedCrop (scale ``global_crops_scale`` / ``local_crops_scale``, aspect
  3/4..4/3, bicubic, antialiased) and a horizontal flip with p 0.5;
* colour: ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8,
  applied in a random order as torchvision does; VersaMammo removed DINOv2's RandomGrayscale;
* Gaussian blur (kernel 9, sigma uniform in [0.1, 2.0]) with the *intended* probabilities:
  global crop 1 always, global crop 2 p 0.1, local crops p 0.5. DINOv2's ``GaussianBlur``
  wrapper passes ``1 - p`` to ``RandomApply``, so the official run never blurs global crop 1,
  blurs global crop 2 90% of the time and locals 50%. ``official_blur_bug=True`` reproduces
  that for comparison;
* solarize (threshold 128) with p 0.2 on global crop 2 only;
* ``/255`` then normalisation with the teacher's (ImageNet) mean and std.

Every random draw comes from the ``torch.Generator`` passed in, so one seed gives the same
crops on any machine and in any DataLoader worker. Pixel operations run on ``uint8``
tensors (like the PIL pipeline, which rounds after every step).

Grey input: the image is kept as one channel until the end and then replicated to three.
Saturation and hue jitter are exact identities on a grey image (saturation blends the image
with its own grey version, hue rotates a zero-saturation colour), so for one-channel input
their factors are drawn, keeping the random stream identical, but the no-op work is skipped.
A three-channel input gets all four jitter operations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from training.config import SSLSection
from models.versamammo.config import VersaMammoConfig


@dataclass(frozen=True)
class AugmentConfig:
    global_size: int = 224
    local_size: int = 98
    global_scale: tuple[float, float] = (0.95, 1.0)
    local_scale: tuple[float, float] = (0.2, 0.6)
    local_crops_number: int = 2
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    blur_p_global1: float = 1.0
    blur_p_global2: float = 0.1
    blur_p_local: float = 0.5
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p_global2: float = 0.2
    solarize_threshold: int = 128
    official_blur_bug: bool = False  # True: apply blur with 1 - p, as the official code does

    @classmethod
    def from_configs(cls, ssl_cfg: SSLSection, model_cfg: VersaMammoConfig, **overrides: Any) -> "AugmentConfig":
        """From ``TrainConfig.ssl`` and a ``models.versamammo.checkpoint`` config (crop sizes, normalisation)."""
        mean, std = model_cfg.teacher_norm
        values = dict(
            global_size=int(model_cfg.teacher_global), local_size=int(model_cfg.teacher_local),
            global_scale=tuple(ssl_cfg.global_crops_scale), local_scale=tuple(ssl_cfg.local_crops_scale),
            local_crops_number=int(ssl_cfg.local_crops_number),
            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
            official_blur_bug=bool(getattr(ssl_cfg, "official_blur_bug", False)),
        )
        values.update(overrides)
        return cls(**values)

    def blur_probability(self, p: float) -> float:
        return 1.0 - p if self.official_blur_bug else p


# ------------------------------------------------------------------------------ random draws
def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * _rand(g)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=g))


def random_resized_crop_params(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                               g: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as torchvision's RandomResizedCrop picks them (10 tries, then a centre crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(g, 0, height - h + 1)
            left = _randint(g, 0, width - w + 1)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------------------- augmentation
class MultiCropAugmentation:
    """Callable: ``aug(image_uint8_HW, generator) -> {"global_crops": [...], "local_crops": [...]}``."""

    def __init__(self, config: AugmentConfig) -> None:
        self.cfg = config
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(-1, 1, 1)

    # -- building blocks -----------------------------------------------------------------
    def _geometry(self, img: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        _, height, width = img.shape
        top, left, h, w = random_resized_crop_params(height, width, scale, self.cfg.ratio, g)
        out = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC,
                              antialias=True)
        if _rand(g) < self.cfg.hflip_p:
            out = TF.horizontal_flip(out)
        return out

    def _color_jitter(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        if not _rand(g) < c.jitter_p:
            return img
        order = torch.randperm(4, generator=g).tolist()
        b = _uniform(g, max(0.0, 1 - c.brightness), 1 + c.brightness)
        ct = _uniform(g, max(0.0, 1 - c.contrast), 1 + c.contrast)
        s = _uniform(g, max(0.0, 1 - c.saturation), 1 + c.saturation)
        h = _uniform(g, -c.hue, c.hue)
        colour = img.shape[0] == 3
        for fn in order:
            if fn == 0:
                img = TF.adjust_brightness(img, b)
            elif fn == 1:
                img = TF.adjust_contrast(img, ct)
            elif fn == 2 and colour:
                img = TF.adjust_saturation(img, s)
            elif fn == 3 and colour:
                img = TF.adjust_hue(img, h)
        return img

    def _blur(self, img: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        if not _rand(g) < self.cfg.blur_probability(p):
            return img
        sigma = _uniform(g, *self.cfg.blur_sigma)
        k = self.cfg.blur_kernel
        return TF.gaussian_blur(img, [k, k], [sigma, sigma])

    def _solarize(self, img: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        if _rand(g) < p:
            img = TF.solarize(img, threshold=self.cfg.solarize_threshold)
        return img

    def _normalize(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        x = img.to(torch.float32).div_(255.0)
        return (x - self._mean) / self._std

    # -- public ------------------------------------------------------------------------------
    @staticmethod
    def as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8`` ``(C, H, W)`` from ``(H, W)`` / ``(H, W, C)`` numpy or ``(H, W)`` / ``(C, H, W)`` tensor."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"expected a uint8 image, got {image.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(image))
            if t.ndim == 3:
                t = t.permute(2, 0, 1)
        else:
            t = image
            if t.dtype != torch.uint8:
                raise TypeError(f"expected a uint8 image, got {t.dtype}")
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected (H, W), (H, W, C) or (C, H, W) with C in (1, 3), got {tuple(t.shape)}")
        return t.contiguous()

    def __call__(self, image: np.ndarray | torch.Tensor, generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
        c = self.cfg
        img = self.as_tensor(image)
        g = generator
        # global crop 1: jitter, blur (p 1.0)
        g1 = self._geometry(img, c.global_size, c.global_scale, g)
        g1 = self._blur(self._color_jitter(g1, g), c.blur_p_global1, g)
        # global crop 2: jitter, blur (p 0.1), solarize (p 0.2)
        g2 = self._geometry(img, c.global_size, c.global_scale, g)
        g2 = self._solarize(self._blur(self._color_jitter(g2, g), c.blur_p_global2, g), c.solarize_p_global2, g)
        locals_ = []
        for _ in range(c.local_crops_number):
            loc = self._geometry(img, c.local_size, c.local_scale, g)
            locals_.append(self._normalize(self._blur(self._color_jitter(loc, g), c.blur_p_local, g)))
        return {"global_crops": [self._normalize(g1), self._normalize(g2)], "local_crops": locals_}


def eval_transform(image: np.ndarray | torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                   crop_fraction: float = 1.0) -> torch.Tensor:
    """Deterministic transform for feature extraction: centre crop (``crop_fraction`` of the
    shorter side), bicubic resize to ``size``, normalise; ``(3, size, size)`` float."""
    img = MultiCropAugmentation.as_tensor(image)
    _, h, w = img.shape
    side = max(1, int(round(min(h, w) * crop_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    if crop_fraction >= 1.0:
        top, left, ch, cw = 0, 0, h, w  # squash the whole image, as training did
    else:
        ch = cw = side
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    if out.shape[0] == 1:
        out = out.expand(3, -1, -1)
    x = out.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s

"""ONNX Runtime sessions: provider selection, session options, and why a provider was (not) used.

Providers are asked for in the configured order (default TensorRT, then CUDA, then CPU) and only
those this onnxruntime build offers are passed on; ORT itself falls back to CPU where a GPU
provider fails to start, and the providers it really used are logged and returned.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnxruntime as ort

log = logging.getLogger("mammo_node.inference")

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class SessionSettings:
    """How sessions are made; from the ``[inference]`` configuration section.

    ``intra_op_threads`` 0 lets ORT choose (one per core). Spinning is off by default: a node
    shares its cores with DICOM receiving and preprocessing, and spinning ORT threads slow both.
    ``trt_cache`` is where TensorRT keeps built engines (building takes minutes; reuse is instant).
    """

    providers: Sequence[str] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    trt_fp16: bool = True
    trt_cache: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def available_providers() -> list[str]:
    """Providers this onnxruntime build was compiled with (not necessarily usable here)."""
    return list(ort.get_available_providers())


@functools.lru_cache(maxsize=1)
def gpu_driver_present() -> bool:
    """Is an NVIDIA driver installed? onnxruntime-gpu lists its CUDA and TensorRT providers on any
    machine; without a driver they can only fail (noisily), so they are skipped up front."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def provider_list(settings: SessionSettings) -> list[Any]:
    """The configured providers this build offers, with their options, in order; CPU always last."""
    offered = set(available_providers())
    chosen: list[Any] = []
    for key in settings.providers:
        name = PROVIDER_NAMES.get(key)
        if name is None:
            raise ValueError(f"unknown provider {key!r}; expected one of {sorted(PROVIDER_NAMES)}")
        if name not in offered:
            if key != "cpu":
                log.info("provider %s not offered by this onnxruntime build; skipped", name)
            continue
        if key != "cpu" and not gpu_driver_present():
            log.debug("provider %s skipped: no NVIDIA driver on this machine", name)
            continue
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {"trt_fp16_enable": settings.trt_fp16}
            if settings.trt_cache is not None:
                settings.trt_cache.mkdir(parents=True, exist_ok=True)
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(settings.trt_cache))
            chosen.append((name, options))
        else:
            chosen.append(name)
    if "CPUExecutionProvider" not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(settings.intra_op_threads)
    options.inter_op_num_threads = int(settings.inter_op_threads)
    options.log_severity_level = 3  # errors only; provider fallbacks are logged by us
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.allow_spinning else "0")
    return options


def open_session(path: Path, settings: SessionSettings) -> ort.InferenceSession:
    """An InferenceSession for ``path``; logs which providers it really runs on."""
    providers = provider_list(settings)
    # A GPU provider that cannot start makes ORT print its fallback to stdout (which would corrupt
    # --json output); capture it and log it instead.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        session = ort.InferenceSession(str(path), sess_options=session_options(settings), providers=providers)
    if printed.getvalue().strip():
        log.warning("a GPU provider failed to start for %s; ONNX Runtime fell back: %s", Path(path).name,
                    " ".join(printed.getvalue().split())[:300])
    log.info("loaded %s on %s", Path(path).name, ",".join(session.get_providers()))
    return session


def device_of(session: ort.InferenceSession) -> str:
    """"cuda" when the session's first provider is a GPU one, else "cpu" (where IO binding puts values)."""
    first = session.get_providers()[0]
    return "cuda" if first in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

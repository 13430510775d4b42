"""Training-state checkpoints: atomic writes and exact resume.

A checkpoint is one ``torch.save`` file holding everything needed to continue a run as if it
had never stopped::

    {"format": "mammo-node/train-state", "version": 1,
     "model": state_dict, "optimizer": state_dict, "scaler": state_dict | None,
     "schedules": {"iteration": it}, "rng": [per-rank RNG states], "iteration": it,
     "epoch": epoch, "world_size": W, "config": {...}, "extra": {...}}

``iteration`` is the number of iterations completed (the next one to run). Schedules are
pure functions of the config and the iteration (training/schedules.py), so their position is
the iteration. RNG states (python, numpy, torch CPU, every CUDA device) are gathered from all
ranks so that each rank resumes its own stream.

Writes are atomic: the file is written under a temporary name in the same directory, fsynced,
then renamed over the target, so a crash leaves either the old or the new checkpoint, never a
truncated one. Everything stored loads with ``torch.load(weights_only=True)``.

Sharded (FSDP2 / DTensor) models go through ``torch.distributed.checkpoint.state_dict`` to
produce full, unsharded CPU state dicts; those calls are collective, so every rank must call
:func:`save_training_state` (only rank 0 writes).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import distributed as du

FORMAT = "mammo-node/train-state"
VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


# --------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, all CUDA devices) in a weights_only-safe form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------- file writing
def atomic_torch_save(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def checkpoint_path(directory: Path | str, iteration: int) -> Path:
    return Path(directory) / f"checkpoint_{iteration:08d}.pt"


def list_checkpoints(directory: Path | str) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: Path | str) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: Path | str, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------ (un)sharded states
def _is_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict (collective for sharded models)."""
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _to_cpu(optimizer.state_dict())


def apply_model_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        model.load_state_dict(state, strict=strict)


def apply_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------ save / load
def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode("utf-8"))
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode("utf-8"))
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode("utf-8"))
    return h.hexdigest()


def save_training_state(path: Path | str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                        scaler: Any | None, iteration: int, epoch: int, config: dict[str, Any] | None = None,
                        extra: dict[str, Any] | None = None, check_replicas: bool = False) -> Path | None:
    """Gather the state from every rank and write it atomically from rank 0.

    Collective under torch.distributed: every rank must call it. Returns the path on rank 0,
    None elsewhere. ``check_replicas`` (replicated, i.e. DDP, models only): every rank
    fingerprints its own model state; the fingerprints are stored as ``rank_fingerprints``
    and a mismatch (ranks out of sync) raises ``RuntimeError`` after the file is written.
    """
    sharded = _is_sharded(model)
    need_model = du.is_main() or sharded or check_replicas
    model_state = gather_model_state(model) if need_model else {}
    optim_state = None
    if optimizer is not None and (du.is_main() or sharded):
        optim_state = gather_optimizer_state(model, optimizer)
    rng_states = du.all_gather_object(capture_rng_state())
    fingerprints = du.all_gather_object(state_fingerprint(model_state)) if check_replicas and not sharded else None
    path = Path(path)
    if du.is_main():
        state = {
            "format": FORMAT, "version": VERSION,
            "model": model_state, "optimizer": optim_state,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "schedules": {"iteration": int(iteration)},
            "rng": rng_states,
            "iteration": int(iteration), "epoch": int(epoch),
            "world_size": du.get_world_size(),
            "config": config or {}, "extra": extra or {},
            "rank_fingerprints": fingerprints,
        }
        atomic_torch_save(state, path)
    du.barrier()
    if fingerprints is not None and len(set(fingerprints)) > 1:
        raise RuntimeError(f"model replicas differ across ranks at iteration {iteration}: {fingerprints}")
    return path if du.is_main() else None


def read_training_state(path: Path | str) -> dict[str, Any]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path}: checkpoint version {state['version']} is newer than this code ({VERSION})")
    return state


def load_training_state(path: Path | str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        scaler: Any | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint into ``model``/``optimizer``/``scaler`` and restore this rank's RNG.

    Returns the checkpoint dict (``iteration``, ``epoch``, ``config``, ``extra``...). Every
    rank reads the file itself (it must be on a filesystem all ranks see).
    """
    state = read_training_state(path)
    apply_model_state(model, state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        apply_optimizer_state(model, optimizer, state["optimizer"])
    if scaler is not None and state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        rngs = state.get("rng") or []
        rank = du.get_rank()
        if rank < len(rngs):
            restore_rng_state(rngs[rank])
    return state

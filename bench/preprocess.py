"""Preprocessing benchmark: ms per image for each step of models.preprocess, on ONE core.

    python -m bench.preprocess [--studies 2] [--repeats 5] [--cpu N] [--syntaxes] [--json OUT]

Target: ``preprocess()`` of a full-size phantom (3328x2560, 14-bit) in at most 150 ms on one
core, excluding the file read but including the decode of uncompressed data. The process is
pinned to one CPU and BLAS/OpenMP pools to one thread before numpy is imported. Each
repetition re-parses the file from memory (not timed), so the pixel decode is never served from
pydicom's cache. Phantoms are generated once into bench/out/preprocess/ (gitignored).

Steps of the fast path (``prepare_uint8``): decode = stored pixels (pydicom), to_uint8 = window
choice + per-value display table, crop = segmentation + mapping the crop to 8 bits, resize,
normalize; total = ``preprocess()`` end to end. ``--reference`` also times the composed public
functions (``decode`` -> ``to_uint8`` -> ``breast_crop`` -> ``resize``), which give the same bytes.
``--syntaxes`` adds decode + total for the compressed transfer syntaxes (one study each; slow to
generate). The machines are shared and noisy: the median over images x repetitions is printed.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from models.preprocess import (  # noqa: E402
    PreprocessConfig,
    breast_crop,
    decode,
    normalize,
    prepare_uint8,
    resize,
    to_uint8,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "preprocess"
SEED = 7
STEPS = ("decode", "to_uint8", "crop", "resize", "normalize", "total")
CONFIGS = {
    "voi/squash": PreprocessConfig(),
    "minmax/squash": PreprocessConfig(intensity="minmax"),
    "voi/pad/flip": PreprocessConfig(resize="pad", flip_to="L"),
}


def phantom_files(size: str, studies: int, syntax: str = "explicit") -> list[Path]:
    """The four views of ``studies`` phantom studies, generated once under bench/out/preprocess/."""
    from phantoms.study import PhantomOptions, write_phantom_studies

    folder = OUT / f"phantoms-{size}-{syntax}-{SEED}-{studies}"
    marker = folder / "done"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {studies} {size} {syntax} phantom studies into {folder} ...", flush=True)
        write_phantom_studies(folder, studies, SEED, PhantomOptions(size=size, transfer_syntax=syntax))
        marker.touch()
    return sorted(folder.glob("study-*/*.dcm"))


def time_fast(data: bytes, cfg: PreprocessConfig) -> dict[str, float]:
    ds = pydicom.dcmread(io.BytesIO(data))
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = prepare_uint8(ds, cfg, timings=stages)
    t1 = time.perf_counter()
    normalize(prepared.image, cfg)
    t2 = time.perf_counter()
    stages["normalize"] = t2 - t1
    stages["total"] = t2 - t0
    return stages


def time_reference(data: bytes, cfg: PreprocessConfig) -> dict[str, float]:
    ds = pydicom.dcmread(io.BytesIO(data))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    pixels = decode(ds)
    t1 = time.perf_counter()
    img8 = to_uint8(ds, pixels, cfg)
    t2 = time.perf_counter()
    crop, _ = breast_crop(img8, cfg)
    t3 = time.perf_counter()
    small = resize(crop, cfg.size, cfg.resize)
    t4 = time.perf_counter()
    normalize(small, cfg)
    t5 = time.perf_counter()
    out.update(decode=t1 - t0, to_uint8=t2 - t1, crop=t3 - t2, resize=t4 - t3, normalize=t5 - t4, total=t5 - t0)
    return out


def run(files: list[Path], cfg: PreprocessConfig, repeats: int, fn=time_fast) -> dict[str, float]:
    """Median ms per step over images x repeats (one warm-up per image first)."""
    samples: dict[str, list[float]] = {s: [] for s in STEPS}
    for path in files:
        data = path.read_bytes()
        fn(data, cfg)
        for _ in range(repeats):
            for step, seconds in fn(data, cfg).items():
                samples[step].append(seconds * 1000.0)
    return {s: round(statistics.median(v), 1) for s, v in samples.items() if v}


def read_ms(files: list[Path]) -> float:
    times = []
    for path in files:
        t0 = time.perf_counter()
        pydicom.dcmread(path)
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(statistics.median(times), 1)


def table(title: str, rows: dict[str, dict[str, float]]) -> str:
    lines = [title, f"{'':28s}" + "".join(f"{s:>11s}" for s in STEPS)]
    for name, r in rows.items():
        lines.append(f"{name:28s}" + "".join(f"{r.get(s, float('nan')):11.1f}" for s in STEPS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=2, help="phantom studies per size (4 images each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--reference", action="store_true", help="also time the composed public functions")
    ap.add_argument("--syntaxes", action="store_true", help="also time compressed transfer syntaxes (full size)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    print(f"pinned to CPU {cpu}; numpy {np.__version__}, pydicom {pydicom.__version__}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for size in ("small", "full"):
        files = phantom_files(size, args.studies)
        rows = {name: run(files, cfg, args.repeats) for name, cfg in CONFIGS.items()}
        if args.reference:
            rows["reference voi/squash"] = run(files, CONFIGS["voi/squash"], 1, time_reference)
        results[size] = rows
        shape = pydicom.dcmread(files[0], stop_before_pixels=True)
        print()
        print(table(f"{size} phantom ({shape.Rows}x{shape.Columns}, {len(files)} images, file read "
                    f"{read_ms(files)} ms, not included), ms per image:", rows))
    if args.syntaxes:
        rows = {}
        for syntax in ("implicit", "deflated", "jpeg-ls", "jpeg2000", "rle"):
            files = phantom_files("full", 1, syntax)
            rows[syntax] = run(files, CONFIGS["voi/squash"], max(1, args.repeats // 2))
        results["full-syntaxes"] = rows
        print()
        print(table("full phantom by transfer syntax (voi/squash), ms per image:", rows))
    total = results["full"]["voi/squash"]["total"]
    print(f"\nfull-size preprocess() total: {total} ms per image (target <= 150 ms on one core)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

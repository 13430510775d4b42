"""Train/val/test assignment grouped by patient, deterministic, respecting splits already set.

Why by patient: the four views of a study (and the studies of one patient) are strongly
correlated; an image of a patient in train and another in test would inflate every metric.
Why a hash order: each patient's rank is sha256(seed, patient id), independent of the order the
records come in and of Python's hash randomisation, so the same data and seed give the same
split on any machine. Quotas are exact patient counts (rounded), not per-patient coin flips,
so small data sets still get their fractions.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import replace
from typing import Iterable

from training.data.image_record import SPLITS, ImageRecord


def _rank(seed: int, patient_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{patient_id}".encode("utf-8")).hexdigest()


def assign_splits(records: Iterable[ImageRecord], seed: int, val_fraction: float,
                  test_fraction: float) -> list[ImageRecord]:
    """Records (same order) with ``split`` set for every one that had none.

    Patients that already have a split keep it for all their records (an unassigned record of
    such a patient joins the patient's split; a patient already spread over several splits keeps
    the records as they are and its unassigned ones join the first of them in train/val/test
    order). The other patients fill what the fractions of *all* patients still call for,
    test first, then val; the rest is train.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad fractions: val {val_fraction}, test {test_fraction}")
    records = list(records)
    existing: dict[str, set[str]] = defaultdict(set)
    patients: list[str] = []
    seen: set[str] = set()
    for r in records:
        if r.patient_id not in seen:
            seen.add(r.patient_id)
            patients.append(r.patient_id)
        if r.split is not None:
            existing[r.patient_id].add(r.split)

    chosen: dict[str, str] = {p: next(s for s in SPLITS if s in splits) for p, splits in existing.items()}
    n = len(patients)
    want = {"test": round(n * test_fraction), "val": round(n * val_fraction)}
    have = {s: sum(1 for v in chosen.values() if v == s) for s in SPLITS}
    free = sorted((p for p in patients if p not in chosen), key=lambda p: (_rank(seed, p), p))
    pos = 0
    for split in ("test", "val"):
        take = max(0, min(want[split] - have[split], len(free) - pos))
        for p in free[pos:pos + take]:
            chosen[p] = split
        pos += take
    for p in free[pos:]:
        chosen[p] = "train"
    return [r if r.split is not None else replace(r, split=chosen[r.patient_id]) for r in records]


def split_counts(records: Iterable[ImageRecord]) -> dict[str, int]:
    """Images per split (None counted as 'unassigned'); for logs and tests."""
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.split or "unassigned"] += 1
    return dict(counts)

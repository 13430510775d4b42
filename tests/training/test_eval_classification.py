"""Classification metrics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from training.eval.classification import (
    binary_auc, classification_report, macro_auc_ovr, macro_f1, multilabel_report,
)


def test_binary_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60).astype(bool)
    scores = np.round(rng.random(60), 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert binary_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert np.isnan(binary_auc(np.ones(5, bool), np.arange(5.0)))


def test_macro_f1_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_report_perfect_and_chance() -> None:
    y = np.repeat(np.arange(4), 25)
    perfect = np.eye(4)[y]
    report = classification_report(y, perfect, resamples=200)
    assert report["accuracy"]["value"] == 1.0 and report["macro_auc"]["value"] == 1.0
    assert report["accuracy"]["ci95"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    chance = classification_report(y, rng.random((100, 4)), resamples=200)
    low, high = chance["accuracy"]["ci95"]
    assert low < 0.25 < high + 0.1 and chance["macro_auc"]["value"] < 0.7


def test_unlabelled_cases_are_ignored() -> None:
    y = np.array([0, 1, -1, -1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0], [1.0, 0.0]])
    report = classification_report(y, probs, resamples=0)
    assert report["n"] == 2 and report["accuracy"]["value"] == 1.0


def test_multilabel_report() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.6], [0.1, 0.2]])
    report = multilabel_report(targets, probs, mask=np.array([1, 1, 1, 0]), resamples=50)
    assert report["n"] == 3 and report["macro_auc"]["value"] == 1.0 and report["macro_f1"]["value"] == 1.0
    assert macro_auc_ovr(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])) == 1.0

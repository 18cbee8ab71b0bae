"""AUROC, ROC curve, TPR at an FPR budget and accuracy, against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from backdoorlab.metrics.detection import accuracy_at, auroc, roc_curve, tpr_at_fpr


def test_perfect_random_and_inverted_detectors() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), y) == 0.0
    assert auroc(np.ones(6), y) == 0.5  # all tied


def test_tpr_at_fpr_and_accuracy_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.7, 0.05, 0.6, 0.3])
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 0, 1])
    # thresholds: 0.9 -> tpr 1/5 fpr 0; 0.8 -> 2/5, 0; 0.7 -> 3/5, 0; 0.6 -> 3/5, 1/5
    assert tpr_at_fpr(scores, y, 0.1) == pytest.approx(0.6)
    assert tpr_at_fpr(scores, y, 0.2) == pytest.approx(0.6)
    assert tpr_at_fpr(scores, y, 1.0) == 1.0
    assert accuracy_at(scores, y, 0.65) == pytest.approx(0.8)


def test_roc_curve_endpoints() -> None:
    fpr, tpr, thr = roc_curve(np.array([0.2, 0.5, 0.7]), np.array([0, 1, 0]))
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


@pytest.mark.parametrize(
    ("scores", "labels", "needle"),
    [
        ([0.1, 0.2], [1, 1], "at least one"),
        ([0.1], [0, 1], "labels"),
        ([np.nan, 1], [0, 1], "finite"),
        ([1, 2], [0, 2], "0/1"),
    ],
)
def test_bad_input(scores, labels, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        auroc(np.array(scores), np.array(labels))


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_auroc_matches_sklearn(pairs) -> None:
    scores = np.array([float(s) for s, _ in pairs])  # small integers: many ties
    labels = np.array([int(b) for _, b in pairs])
    if labels.all() or not labels.any():
        return
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert 0 <= tpr_at_fpr(scores, labels, 0.1) <= 1

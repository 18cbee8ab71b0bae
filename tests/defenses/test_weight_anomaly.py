"""Weight-anomaly detection: set views of a layer, PCA + mixture over clean references, a fused score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlab.defenses.base import calibrated_threshold
from backdoorlab.defenses.conformance import check_population_detector
from backdoorlab.defenses.weight_anomaly.detector import WeightAnomalyDetector, layer_vectors
from backdoorlab.errors import BackdoorLabError, ConfigError

CENTRES = np.random.default_rng(0).normal(0, 1.0, size=(3, 12))


class Net(nn.Module):
    def __init__(self, rows: np.ndarray) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.last_linear = nn.Linear(12, len(rows), bias=False)
        with torch.no_grad():
            self.last_linear.weight.copy_(torch.as_tensor(rows))


def clean_rows(seed: int, n: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return CENTRES[rng.integers(0, 3, n)] + 0.1 * rng.normal(size=(n, 12))


def backdoored_rows(seed: int) -> np.ndarray:
    rows = clean_rows(seed)
    rows[0] += 1.5 * np.random.default_rng(seed + 99).normal(size=12)  # one unit moved off the clean clusters
    return rows


def test_views_read_rows_or_columns_and_whole_kernels() -> None:
    net = Net(clean_rows(1))
    w = net.last_linear.weight.detach().double().numpy()
    np.testing.assert_array_equal(layer_vectors(net, "last_linear", "backward"), w)
    np.testing.assert_array_equal(layer_vectors(net, "last_linear", "forward"), w.T)
    k = net.conv.weight.detach().double().numpy()  # (3 out, 2 in, 3, 3)
    assert layer_vectors(net, "conv", "backward").shape == (3, 18)
    np.testing.assert_array_equal(layer_vectors(net, "conv", "forward")[1], k[:, 1].reshape(-1))


def test_backdoored_networks_score_above_every_held_out_clean_one() -> None:
    refs = [Net(clean_rows(s)) for s in range(40)]  # 16 of them calibrate the threshold
    det = WeightAnomalyDetector(components=(1, 2, 3, 4, 6), max_fpr=0.0).fit(refs)
    chosen = det.densities[0].mixture.n_components
    assert chosen == 3  # BIC finds the three clusters of units
    clean = [det.inspect(Net(clean_rows(s))).score for s in range(100, 110)]
    bad = [det.inspect(Net(backdoored_rows(s))).score for s in range(200, 210)]
    assert min(bad) > max(clean)
    assert all(det.inspect(Net(backdoored_rows(s))).backdoored for s in range(200, 205))
    flagged_clean = np.mean([det.inspect(Net(clean_rows(s))).backdoored for s in range(300, 340)])
    assert flagged_clean <= 0.15  # the calibrated threshold holds on new clean networks too


def test_the_score_is_blind_to_the_order_of_neurons() -> None:
    det = WeightAnomalyDetector(components=(1, 2, 3)).fit([Net(clean_rows(s)) for s in range(10)])
    rows = backdoored_rows(7)
    shuffled = rows[np.random.default_rng(1).permutation(len(rows))]
    assert det.inspect(Net(shuffled)).score == pytest.approx(det.inspect(Net(rows)).score, rel=1e-9)


def test_layers_and_views_are_fused_and_reported() -> None:
    det = WeightAnomalyDetector(layers=("last_linear", "conv"), views=("forward", "backward"), components=(1, 2))
    refs = [Net(clean_rows(s)) for s in range(10)]  # their conv weights are random: keep these very networks
    det.fit(refs)
    verdict = det.inspect(Net(backdoored_rows(3)))
    per_layer = verdict.details["per_layer"]
    assert set(per_layer) == {"last_linear/forward", "last_linear/backward", "conv/forward", "conv/backward"}
    assert verdict.score == pytest.approx(sum(per_layer.values()))
    thresholds = verdict.details["per_layer_thresholds"]
    assert set(thresholds) == set(per_layer)
    # max_fpr 0: each layer/view alone flags none of the calibration references, and sits just above the highest
    n_cal = round(det.calibration_share * len(refs))
    calibration = [refs[i] for i in np.random.default_rng(det.seed).permutation(len(refs))[:n_cal]]
    for key, threshold in thresholds.items():
        scores = [det.inspect(n).details["per_layer"][key] for n in calibration]
        assert max(scores) < threshold == pytest.approx(calibrated_threshold(scores, det.max_fpr)), key


def test_conformance_of_the_population_shape() -> None:
    check_population_detector(
        WeightAnomalyDetector(components=(1, 2)), [Net(clean_rows(s)) for s in range(8)], [Net(backdoored_rows(1))]
    )


def test_bad_settings_and_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"no layer 'fc'.*last_linear"):
        layer_vectors(Net(clean_rows(0)), "fc", "backward")
    with pytest.raises(ConfigError, match="unknown view"):
        layer_vectors(Net(clean_rows(0)), "last_linear", "sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="variance"):
        WeightAnomalyDetector(variance=1.5)
    with pytest.raises(BackdoorLabError, match="not fitted"):
        WeightAnomalyDetector().inspect(Net(clean_rows(0)))
    with pytest.raises(BackdoorLabError, match="2 reference networks"):
        WeightAnomalyDetector().fit([Net(clean_rows(0)), Net(clean_rows(1))])


def test_two_sided_also_flags_networks_more_typical_than_any_reference() -> None:
    """Weights shrunk towards the clusters' centres score far *below* clean ones: only the two-sided rule sees it."""
    refs = [Net(clean_rows(s)) for s in range(30)]
    one = WeightAnomalyDetector(components=(1, 2, 3, 4), max_fpr=0.0).fit(refs)
    two = WeightAnomalyDetector(components=(1, 2, 3, 4), max_fpr=0.0, two_sided=True).fit(refs)
    rng = np.random.default_rng(5)
    too_typical = Net(CENTRES[rng.integers(0, 3, 9)] + 0.001 * rng.normal(size=(9, 12)))
    assert one.inspect(too_typical).score < min(one.inspect(Net(clean_rows(s))).score for s in range(100, 110))
    assert not one.inspect(too_typical).backdoored and two.inspect(too_typical).backdoored
    assert two.inspect(Net(backdoored_rows(201))).backdoored  # the usual side still counts
    verdict = two.inspect(Net(clean_rows(300)))
    assert verdict.score == pytest.approx(abs(verdict.details["fused"] - two.center))
    assert two.params()["two_sided"] is True

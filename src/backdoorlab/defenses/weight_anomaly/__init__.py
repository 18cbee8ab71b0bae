"""Weight-anomaly detection: PCA of networks' weight vectors scored by a streaming Gaussian mixture."""

from backdoorlab.defenses.weight_anomaly.detector import WeightAnomalyDetector, layer_vectors
from backdoorlab.defenses.weight_anomaly.gmm import (
    ComponentScore,
    CovarianceType,
    FitInfo,
    GaussianMixture,
    fit_gmm,
    select_components,
)

__all__ = [
    "ComponentScore", "CovarianceType", "FitInfo", "GaussianMixture", "WeightAnomalyDetector", "fit_gmm",
    "layer_vectors", "select_components",
]  # fmt: skip

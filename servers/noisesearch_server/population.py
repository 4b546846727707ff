"""Population metrics of a set of final samples against a model's true distribution.

The embedded model's analogue of the paper's FID and Inception Score (Ma et al. 2025, arXiv 2501.09732):

- **Fréchet distance** between Gaussians fitted (mean, covariance) to the features phi(x) of the samples and
  of a reference set drawn exactly from the data distribution with the same class composition
  (`REFERENCE_PER_SAMPLE` reference draws per sample, from a generator seeded by the class alone, so the
  reference depends only on the class multiset of the request).
- **Inception Score** exp(mean_x KL(p(c|x) || p_marg(c))), with p(c|x) the exact Bayes class posterior and
  p_marg its mean over the samples.

Nothing here knows about gRPC or a particular model: a model provides a `PopulationModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

REFERENCE_PER_SAMPLE = 20


class PopulationModel(Protocol):
    num_classes: int
    feature_dim: int

    def features(self, x: np.ndarray) -> np.ndarray:
        """A fixed map (B, D) -> (B, feature_dim)."""
        ...

    def class_log_posteriors(self, x: np.ndarray) -> np.ndarray:
        """log p(c | x) under the data distribution with equal class priors, as (B, num_classes)."""
        ...

    def reference_samples(self, label: int, count: int) -> np.ndarray:
        """`count` exact draws from p(x | label) (the whole distribution for a negative label), the same
        for the same (label, count)."""
        ...


@dataclass(frozen=True)
class PopulationResult:
    frechet_distance: float
    inception_score: float
    samples: int
    reference_samples: int
    feature_dim: int
    # An image model's Fréchet distance in CLIP image-embedding space, when the server has a CLIP reference.
    clip_frechet_distance: float | None = None


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (maximum-likelihood, 1/n) covariance; a single sample gives a zero covariance."""
    mean = features.mean(axis=0)
    centered = features - mean
    covariance = (centered.T @ centered) / len(features)
    return mean, (covariance + covariance.T) / 2


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with Tr (S1 S2)^(1/2) = Tr (sqrt(S1) S2 sqrt(S1))^(1/2)
    from symmetric eigen-decompositions (tiny negative eigenvalues clipped), so singular covariances work."""
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mean1 - mean2
    distance = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    # Rounding can leave a tiny negative for identical inputs; the distance itself is never negative.
    return max(distance, 0.0)


def inception_score(log_posteriors: np.ndarray) -> float:
    """exp(mean_x KL(p(c|x) || p_marg)), p_marg = mean_x p(c|x); in [1, num_classes]."""
    posteriors = np.exp(log_posteriors)
    marginal = posteriors.mean(axis=0)
    log_marginal = np.log(np.clip(marginal, np.finfo(np.float64).tiny, None))
    kl = (np.where(posteriors > 0, posteriors * (log_posteriors - log_marginal), 0.0)).sum(axis=1)
    return float(np.exp(kl.mean()))


def population_metrics(
    model: PopulationModel, samples: np.ndarray, labels: np.ndarray, per_sample: int = REFERENCE_PER_SAMPLE
) -> PopulationResult:
    """`samples` (N, D) float64, `labels` (N,) with negative for unconditional samples."""
    classes, counts = np.unique(labels, return_counts=True)
    reference = np.concatenate(
        [model.reference_samples(int(label), int(count) * per_sample) for label, count in zip(classes, counts)]
    )
    sample_mean, sample_cov = gaussian_fit(model.features(samples))
    reference_mean, reference_cov = gaussian_fit(model.features(reference))
    return PopulationResult(
        frechet_distance=frechet_distance(sample_mean, sample_cov, reference_mean, reference_cov),
        inception_score=inception_score(model.class_log_posteriors(samples)),
        samples=len(samples),
        reference_samples=len(reference),
        feature_dim=model.feature_dim,
    )

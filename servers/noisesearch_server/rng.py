"""Counter-based noise: a recipe gives the same float64 tensor on any server, in any batch."""

from __future__ import annotations

import numpy as np

from .lineage import NoiseRecipe

BASE_NOISE_DOMAIN = 0
PERTURBATION_DOMAIN = 1
RENOISE_DOMAIN = 2


def standard_normal(seed: int, domain: int, dim: int) -> np.ndarray:
    key = np.array([seed, domain], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key)).standard_normal(dim, dtype=np.float64)


def rotate_toward(x: np.ndarray, direction: np.ndarray, cosine: float) -> np.ndarray:
    """The vector with |x|'s norm at cosine `cosine` to x, in the plane of x and `direction`."""
    orthogonal = direction - (np.dot(direction, x) / np.dot(x, x)) * x
    unit_orthogonal = orthogonal / np.linalg.norm(orthogonal)
    return cosine * x + np.sqrt(1.0 - cosine * cosine) * np.linalg.norm(x) * unit_orthogonal


def materialize_noise(recipe: NoiseRecipe, dim: int) -> np.ndarray:
    """The unit-variance noise n of a recipe; the state at sigma_max is sigma_max * n."""
    noise = standard_normal(recipe.seed, BASE_NOISE_DOMAIN, dim)
    for perturbation in recipe.perturbations:
        direction = standard_normal(perturbation.seed, PERTURBATION_DOMAIN, dim)
        noise = rotate_toward(noise, direction, perturbation.cosine)
    return noise


def renoise_eps(seed: int, dim: int) -> np.ndarray:
    return standard_normal(seed, RENOISE_DOMAIN, dim)

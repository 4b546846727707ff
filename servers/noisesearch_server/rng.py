"""Counter-based noise: a recipe gives the same float64 tensor on any server, in any batch."""

from __future__ import annotations

import threading

import numpy as np

from .lineage import Perturbation

BASE_NOISE_DOMAIN = 0
PERTURBATION_DOMAIN = 1
RENOISE_DOMAIN = 2
ANCESTRAL_DOMAIN = 3


def _generator(seed: int, domain: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=np.array([seed, domain], dtype=np.uint64)))


# Building a Philox costs tens of microseconds (numpy reads OS entropy for a seed sequence that a given key
# makes unused), about as much as a candidate's whole Heun solve on the embedded model at batch 64. So each
# thread keeps one generator for one-off draws and rekeys it: a fresh state, the same stream as a new one.
_rekeyable = threading.local()


def _rekeyed(seed: int, domain: int) -> np.random.Generator:
    generator = getattr(_rekeyable, "generator", None)
    if generator is None:
        generator = _rekeyable.generator = _generator(0, 0)
    generator.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, dtype=np.uint64), "key": np.array([seed, domain], dtype=np.uint64)},
        "buffer": np.zeros(4, dtype=np.uint64),
        "buffer_pos": 4,
        "has_uint32": 0,
        "uinteger": 0,
    }
    return generator


def standard_normal(seed: int, domain: int, dim: int) -> np.ndarray:
    return _rekeyed(seed, domain).standard_normal(dim, dtype=np.float64)


def rotate_toward(x: np.ndarray, direction: np.ndarray, cosine: float) -> np.ndarray:
    """The vector with |x|'s norm at cosine `cosine` to x, in the plane of x and `direction`."""
    orthogonal = direction - (np.dot(direction, x) / np.dot(x, x)) * x
    unit_orthogonal = orthogonal / np.linalg.norm(orthogonal)
    return cosine * x + np.sqrt(1.0 - cosine * cosine) * np.linalg.norm(x) * unit_orthogonal


def base_noise(seed: int, dim: int) -> np.ndarray:
    """The unit-variance noise of a recipe before its perturbations; the state at sigma_max is sigma_max * n."""
    return standard_normal(seed, BASE_NOISE_DOMAIN, dim)


def perturb(noise: np.ndarray, perturbations: tuple[Perturbation, ...]) -> np.ndarray:
    """Applies perturbations in order, so a cached noise continues exactly as its whole recipe would."""
    for perturbation in perturbations:
        direction = standard_normal(perturbation.seed, PERTURBATION_DOMAIN, len(noise))
        noise = rotate_toward(noise, direction, perturbation.cosine)
    return noise


def renoise_eps(seed: int, dim: int) -> np.ndarray:
    return standard_normal(seed, RENOISE_DOMAIN, dim)


def ancestral_stream(seed: int) -> np.random.Generator:
    """Draw `dim` values per step: the draws of step t are row t of standard_normal((steps, dim)) from
    Philox([seed, 3]), as the contract says, without holding the whole matrix."""
    return _generator(seed, ANCESTRAL_DOMAIN)

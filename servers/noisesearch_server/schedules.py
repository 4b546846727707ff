"""Noise schedules as maps from a normalised noise level l in [0, 1] (1: pure noise) to a model's sigma.

A solve from sigma_from to sigma_to in n steps visits sigma(l) on the uniform grid of n + 1 levels between
level(sigma_from) and level(sigma_to). "karras" is Karras et al. (2022) eq. 5: sigma^(1/rho) is linear in l
between sigma_min and sigma_max, and a solve to 0 takes its last step from sigma_min (level 0), as
k-diffusion and diffusers' Karras schedules do. "shifted" is the rectified-flow schedule of SD3 and FLUX:
sigma = s*l / (1 + (s - 1)*l), which reaches 0 at level 0 (s = 1: uniform in sigma, as SiT samples).
The paper's sigma-space parameters (paths' sigma_start, delta_f, delta_b) are levels: docs/real-models.md.
"""

from __future__ import annotations

import numpy as np

from .backend import ModelSpec

SCHEDULES = ("karras", "shifted")


def sigma_at_level(spec: ModelSpec, level: np.ndarray | float) -> np.ndarray:
    level = np.asarray(level, dtype=np.float64)
    if spec.schedule == "karras":
        lo, hi = spec.sigma_min ** (1.0 / spec.rho), spec.sigma_max ** (1.0 / spec.rho)
        return (lo + level * (hi - lo)) ** spec.rho
    s = spec.schedule_shift
    return spec.sigma_max * s * level / (1.0 + (s - 1.0) * level)


def level_of_sigma(spec: ModelSpec, sigma: np.ndarray | float) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if spec.schedule == "karras":
        lo, hi = spec.sigma_min ** (1.0 / spec.rho), spec.sigma_max ** (1.0 / spec.rho)
        return (sigma ** (1.0 / spec.rho) - lo) / (hi - lo)
    s = spec.schedule_shift
    u = sigma / spec.sigma_max
    return u / (s - (s - 1.0) * u)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """Karras et al. (2022) eq. 5, with both ends pinned so chained ops meet exactly."""
    ramp = np.linspace(0.0, 1.0, n)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min
    return sigmas


def solve_sigmas(spec: ModelSpec, sigma_from: float, sigma_to: float, steps: int) -> np.ndarray:
    """The steps + 1 sigmas a solve visits; both ends are pinned so that chained ops meet exactly."""
    if spec.schedule == "karras":
        if sigma_to == 0:
            return np.append(karras_sigmas(steps, spec.sigma_min, sigma_from, spec.rho), 0.0)
        return karras_sigmas(steps + 1, sigma_to, sigma_from, spec.rho)
    levels = np.linspace(level_of_sigma(spec, sigma_from), level_of_sigma(spec, sigma_to), steps + 1)
    sigmas = sigma_at_level(spec, levels)
    sigmas[0], sigmas[-1] = sigma_from, sigma_to
    return sigmas

"""The rectified-flow process's own steps, against hand calculations: renoising and the ancestral step."""

import math

import numpy as np

from noisesearch_server.backend import ModelSpec
from noisesearch_server.engine import Engine, TrajectoryCache, renoise_coefficients

FLOW = ModelSpec(
    name="flow", latent_shape=(1,), sigma_min=1e-3, sigma_max=1.0, rho=1.0, num_classes=0, default_solver="euler",
    default_steps=4, default_guidance_scale=0.0, identity="flow", process="flow", schedule="shifted",
)


class Unused:
    spec = FLOW


def test_renoising_a_flow_state_lands_on_the_marginal_at_the_higher_sigma():
    # 0.5 -> 0.8: a = (1 - 0.8) / (1 - 0.5) = 0.4; b = sqrt(0.8^2 - 0.4^2 * 0.5^2) = sqrt(0.6).
    a, b = renoise_coefficients("flow", 0.5, 0.8)
    assert math.isclose(a, 0.4, rel_tol=1e-15) and math.isclose(b, math.sqrt(0.6), rel_tol=1e-15)
    # The x0 coefficient becomes 1 - 0.8 and the noise's variance 0.8^2, as the marginal has them.
    assert math.isclose(a * (1 - 0.5), 0.2) and math.isclose((a * 0.5) ** 2 + b**2, 0.64)
    assert renoise_coefficients("ve", 1.0, 3.0) == (1.0, math.sqrt(8.0))


def test_the_ancestral_step_of_a_flow_state_is_taken_in_ve_coordinates():
    engine = Engine(Unused(), {}, TrajectoryCache(0), None)
    # sigma 0.5 -> 0.25 is VE 1 -> 1/3: sigma_up = sqrt((1/9)(1 - 1/9)) = sqrt(8)/9, sigma_down = 1/9.
    # x_next = (1 - 0.25) * (D + (1/9)(x / 0.5 - D) + sigma_up * eps).
    one, zero = np.array([[1.0]]), np.array([[0.0]])
    drift = engine._ancestral(one, 0.5, 0.25, zero, zero, zero)
    assert math.isclose(drift[0, 0], 0.75 * 2 / 9, rel_tol=1e-12)
    fresh = engine._ancestral(zero, 0.5, 0.25, zero, zero, one)
    assert math.isclose(fresh[0, 0], 0.75 * math.sqrt(8) / 9, rel_tol=1e-12)
    # From pure noise (sigma 1, VE infinity) and to 0, the step is plain Euler.
    assert engine._ancestral(one, 1.0, 0.5, zero, zero, one) is None
    assert engine._ancestral(one, 0.5, 0.0, zero, zero, one) is None

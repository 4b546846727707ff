import tomllib
from pathlib import Path

import numpy as np
import pytest

from noisesearch_server.backend import Rows
from noisesearch_server.gmm import gmm_verifiers, logsumexp

from conftest import candidate, evaluate_one, make_backend


def monte_carlo_posterior_mean(model, x_sigma, sigma, labels, rng, draws=200_000):
    """Self-normalized importance sampling of E[x0 | x_sigma] with exact draws x0 ~ p(x0 | c)."""
    x0 = model.sample(labels[rng.integers(0, len(labels), draws)], rng)
    log_weights = -((x_sigma - x0) ** 2).sum(axis=-1) / (2 * sigma**2)
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    estimate = weights @ x0
    standard_error = np.sqrt((weights[:, None] ** 2 * (x0 - estimate) ** 2).sum(axis=0))
    effective_draws = 1 / (weights**2).sum()
    return estimate, standard_error, effective_draws


@pytest.mark.parametrize(("sigma", "label"), [(0.6, 2), (1.5, 7), (4.0, 5), (1.0, None)])
def test_closed_form_denoiser_matches_monte_carlo(model, sigma, label):
    rng = np.random.default_rng(42)
    clean = model.sample(np.array([label if label is not None else 4]), rng)[0]
    x_sigma = clean + sigma * rng.standard_normal(model.config.dim)
    prior_labels = np.arange(model.config.num_classes) if label is None else np.array([label])
    estimate, standard_error, effective_draws = monte_carlo_posterior_mean(model, x_sigma, sigma, prior_labels, rng)
    assert effective_draws > 200
    exact = model.posterior_mean(x_sigma[None], sigma, np.array([-1 if label is None else label]), np.array([1.0]))[0]
    assert np.all(np.abs(exact - estimate) < 5 * standard_error + 1e-9)


def test_guidance_mixes_conditional_and_unconditional(model):
    x = np.random.default_rng(1).standard_normal((3, model.config.dim))
    conditional = model.posterior_mean(x, 0.8, np.array([1, 1, 1]), np.ones(3))
    unconditional = model.posterior_mean(x, 0.8, np.array([-1, -1, -1]), np.ones(3))
    guided = model.posterior_mean(x, 0.8, np.array([1, 1, 1]), np.full(3, 2.5))
    np.testing.assert_allclose(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-12, atol=1e-12)


def test_classes_overlap_so_a_classifier_has_something_to_choose(model):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, model.config.num_classes, 2000)
    x = model.sample(labels, rng)
    class_log_densities = model.class_log_densities(x)
    true_posterior = np.exp(class_log_densities[np.arange(len(x)), labels] - logsumexp(class_log_densities))
    assert 0.3 < true_posterior.mean() < 0.75


def test_best_of_64_noises_by_classifier_beats_the_mean(model):
    backend = make_backend(model, cache_bytes=0)
    response = evaluate_one(backend, [candidate(seed, label=6) for seed in range(64)], ["gmm-classifier"])
    scores = np.array([r.scores["gmm-classifier"] for r in response.results])
    assert scores.max() > scores.mean() + 0.1


def dense_component_log_densities(model, x, sigma):
    """log N(x; mu_k, s^2 I + U_k U_k^T + sigma^2 I) with each covariance written out as a full matrix."""
    dim = model.config.dim
    columns = []
    for mean, factor in zip(model.means, model.factors):
        covariance = (model.config.isotropic_std**2 + sigma**2) * np.eye(dim) + factor.T @ factor
        diff = x - mean
        quadratic = np.einsum("bi,bi->b", diff, np.linalg.solve(covariance, diff.T).T)
        columns.append(-0.5 * (quadratic + np.linalg.slogdet(covariance)[1] + dim * np.log(2 * np.pi)))
    return np.stack(columns, axis=1)


def dense_class_log_densities(model, x):
    per_component = dense_component_log_densities(model, x, 0.0).reshape(len(x), model.config.num_classes, -1)
    return np.logaddexp.reduce(per_component, axis=-1) - np.log(model.config.components_per_class)


def dense_denoiser(model, x, sigma, in_class):
    """E[x0 | x] = sum_k p(k | x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k)), over the allowed components."""
    log_density = np.where(in_class, dense_component_log_densities(model, x, sigma), -np.inf)
    weights = np.exp(log_density - np.logaddexp.reduce(log_density, axis=1, keepdims=True))
    dim = model.config.dim
    result = np.zeros_like(x)
    for k, (mean, factor) in enumerate(zip(model.means, model.factors)):
        covariance = model.config.isotropic_std**2 * np.eye(dim) + factor.T @ factor
        posterior_mean = mean + (covariance @ np.linalg.solve(covariance + sigma**2 * np.eye(dim), (x - mean).T)).T
        result += weights[:, k, None] * posterior_mean
    return result


@pytest.mark.parametrize("sigma", [0.02, 0.4, 3.0, 20.0])
def test_denoiser_matches_the_dense_posterior_mean(model, sigma):
    rng = np.random.default_rng(5)
    labels = np.array([0, 3, 9, -1, 3, -1])
    x = model.sample(np.abs(labels), rng) + sigma * rng.standard_normal((len(labels), model.config.dim))
    components = model.config.components_per_class * model.config.num_classes
    all_components = np.ones((len(x), components), dtype=bool)
    in_class = (np.arange(components)[None] // model.config.components_per_class == labels[:, None]) | (labels[:, None] < 0)
    conditional = dense_denoiser(model, x, sigma, in_class)
    unconditional = dense_denoiser(model, x, sigma, all_components)
    guidance = np.array([1.0, 2.5, 0.0, 3.0, 1.0, 0.0])
    expected = np.where(
        ((labels < 0) | (guidance == 1.0))[:, None], conditional, unconditional + guidance[:, None] * (conditional - unconditional)
    )
    np.testing.assert_allclose(model.posterior_mean(x, sigma, labels, guidance), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", [0.02, 1.3, 40.0])
def test_each_row_is_bit_identical_in_any_batch(model, sigma):
    """Rows of every kind (a class at guidance 1, guided, unconditional) mixed, in batches across the block size."""
    rng = np.random.default_rng(11)
    count = 260
    x = sigma * rng.standard_normal((count, model.config.dim)) + model.sample(rng.integers(0, 10, count), rng)
    labels = rng.integers(-1, model.config.num_classes, count)
    guidance = rng.choice([1.0, 1.0, 0.0, 2.5], count)
    alone = [model.posterior_mean(x[i : i + 1], sigma, labels[i : i + 1], guidance[i : i + 1]).tobytes() for i in range(count)]
    class_rows = np.abs(labels)
    alone_in_class = [model.posterior_mean(x[i : i + 1], sigma, class_rows[i : i + 1], np.ones(1)).tobytes() for i in range(count)]
    densities_alone = [model.class_log_densities(x[i : i + 1]).tobytes() for i in range(count)]
    for size, offset in [(7, 3), (16, 100), (64, 0), (100, 17), (129, 131), (260, 0)]:
        rows = slice(offset, offset + size)
        batch = model.posterior_mean(x[rows], sigma, labels[rows], guidance[rows])
        assert [row.tobytes() for row in batch] == alone[rows]
        batch = model.posterior_mean(x[rows], sigma, class_rows[rows], np.ones(size))
        assert [row.tobytes() for row in batch] == alone_in_class[rows]
        assert [row.tobytes() for row in model.class_log_densities(x[rows])] == densities_alone[rows]


def test_verifiers_agree_with_their_definitions(model):
    rng = np.random.default_rng(3)
    labels = np.array([0, 5, 5, 9])
    x = model.sample(labels, rng)
    oracle, classifier, selfsup = gmm_verifiers(model)
    per_class = dense_class_log_densities(model, x)
    rows = np.arange(len(x))
    np.testing.assert_allclose(oracle.score(x, Rows.of_labels(labels), None), per_class[rows, labels], rtol=1e-10)
    posterior = np.exp(per_class[rows, labels]) / np.exp(per_class).sum(axis=1)
    np.testing.assert_allclose(np.exp(classifier.score(x, Rows.of_labels(labels), None)), posterior, rtol=1e-10)
    np.testing.assert_allclose(selfsup.score(x, Rows.of_labels(labels), x), 1.0)


def test_numpy_is_pinned_to_the_version_in_the_model_identity(model):
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert f"numpy=={np.__version__}" in pyproject["project"]["dependencies"]
    assert f"numpy={np.__version__}:" in model.spec.identity


def test_the_formulation_revision_is_in_the_model_identity(model):
    # States of a denoiser that sums in another order differ by rounding: they must not share cache keys.
    assert model.spec.identity.startswith("gmm/2:")

import numpy as np
import pytest

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
    exact = model.denoise(x_sigma[None], sigma, np.array([-1 if label is None else label]), np.array([1.0]))[0]
    assert np.all(np.abs(exact - estimate) < 5 * standard_error + 1e-9)


def test_guidance_mixes_conditional_and_unconditional(model):
    x = np.random.default_rng(1).standard_normal((3, model.config.dim))
    conditional = model.denoise(x, 0.8, np.array([1, 1, 1]), np.ones(3))
    unconditional = model.denoise(x, 0.8, np.array([-1, -1, -1]), np.ones(3))
    guided = model.denoise(x, 0.8, np.array([1, 1, 1]), np.full(3, 2.5))
    np.testing.assert_allclose(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-12, atol=1e-12)


def test_classes_overlap_so_a_classifier_has_something_to_choose(model):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, model.config.num_classes, 2000)
    x = model.sample(labels, rng)
    class_log_densities = model.class_log_densities(x)
    true_posterior = np.exp(class_log_densities[np.arange(len(x)), labels] - logsumexp(class_log_densities))
    assert 0.3 < true_posterior.mean() < 0.75


def test_best_of_64_noises_by_classifier_beats_the_mean(model):
    backend = make_backend(model, cache_entries=0)
    response = evaluate_one(backend, [candidate(seed, label=6) for seed in range(64)], ["gmm-classifier"])
    scores = np.array([r.scores["gmm-classifier"] for r in response.results])
    assert scores.max() > scores.mean() + 0.1


def test_verifiers_agree_with_their_definitions(model):
    rng = np.random.default_rng(3)
    x = model.sample(np.array([0, 5]), rng)
    oracle, classifier, selfsup = gmm_verifiers(model)
    labels = np.array([0, 5])
    per_class = model.class_log_densities(x)
    np.testing.assert_allclose(oracle.score(x, labels, None), per_class[[0, 1], labels])
    posterior = np.exp(per_class[[0, 1], labels]) / np.exp(per_class).sum(axis=1)
    np.testing.assert_allclose(np.exp(classifier.score(x, labels, None)), posterior)
    np.testing.assert_allclose(selfsup.score(x, labels, x), 1.0)

"""Population metrics (Fréchet distance, Inception Score) against the mixture's true distribution."""

import math
import time

import grpc
import numpy as np
import pytest

from noisesearch_server.backend import PopulationRequest, RequestError, Rows, Sample
from noisesearch_server.diffusion_backend import MAX_POPULATION_SAMPLES
from noisesearch_server.gmm import GmmPopulation, gmm_verifiers
from noisesearch_server.lineage import Condition
from noisesearch_server.population import (
    REFERENCE_PER_SAMPLE,
    frechet_distance,
    gaussian_fit,
    inception_score,
    population_metrics,
)

from conftest import make_backend
from test_service import DEADLINE, expect_status

CLASSES = 10
PER_CLASS = 40  # 400 samples, like a search run's final population


@pytest.fixture(scope="module")
def population(model):
    return GmmPopulation(model)


def exact(model, per_class, seed, classes=range(CLASSES)):
    labels = np.repeat(np.array(list(classes)), per_class)
    return model.sample(labels, np.random.default_rng([seed, 99])), labels


def verifier_hacked(model, per_class, seed, pool_factor=10):
    """Per class, the top 1/pool_factor of exact samples by the gmm-classifier log posterior."""
    pool, labels = exact(model, per_class * pool_factor, seed)
    classifier = {v.spec.name: v for v in gmm_verifiers(model)}["gmm-classifier"]
    scores = classifier.score(pool, Rows.of_labels(labels), None)
    chosen = np.concatenate(
        [np.flatnonzero(labels == c)[np.argsort(-scores[labels == c], kind="stable")[:per_class]] for c in range(CLASSES)]
    )
    return pool[chosen], labels[chosen]


def request(samples, labels):
    return PopulationRequest(
        tuple(
            Sample(
                values=x.astype(np.float32),
                shape=(len(x),),
                condition=None if label < 0 else Condition(class_label=int(label)),
                xpred=np.zeros(0, np.float32),
            )
            for x, label in zip(samples, labels)
        )
    )


def random_covariance(rng, dim, rank):
    factor = rng.standard_normal((dim, rank))
    return factor @ factor.T


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert math.isclose(frechet_distance(m1, np.diag(a), m2, np.diag(b)), expected, rel_tol=1e-10)
    # Non-commuting: Tr (S1 S2)^(1/2) is the sum of the square roots of the (real, >= 0) eigenvalues of S1 S2.
    s1, s2 = random_covariance(rng, 8, 8), random_covariance(rng, 8, 8)
    cross = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * cross
    assert math.isclose(frechet_distance(np.zeros(8), s1, np.zeros(8), s2), expected, rel_tol=1e-8)
    assert frechet_distance(np.zeros(8), s1, np.zeros(8), s1) < 1e-8
    # Singular covariances (two samples: rank 1) stay finite and non-negative.
    singular1, singular2 = random_covariance(rng, 32, 1), random_covariance(rng, 32, 1)
    value = frechet_distance(np.zeros(32), singular1, np.ones(32), singular2)
    assert math.isfinite(value) and value >= 32 - 1e-9


def test_inception_score_spans_one_to_the_class_count():
    confident = np.log(np.eye(CLASSES) * (1 - 1e-12) + 1e-13)
    assert math.isclose(inception_score(confident), CLASSES, rel_tol=1e-6)
    assert inception_score(np.full((5, CLASSES), -math.log(CLASSES))) == pytest.approx(1.0)


def test_exact_samples_sit_at_the_finite_sample_floor(model, population):
    n = CLASSES * PER_CLASS
    # The floor: FD between independent exact draws of n and 20 n, both with the right class composition.
    floors = []
    for seed in range(3):
        x, _ = exact(model, PER_CLASS, 1000 + seed)
        y, _ = exact(model, PER_CLASS * REFERENCE_PER_SAMPLE, 2000 + seed)
        floors.append(frechet_distance(*gaussian_fit(population.features(x)), *gaussian_fit(population.features(y))))
    floor = float(np.mean(floors))
    true_is = inception_score(population.class_log_posteriors(exact(model, 1000, 7)[0]))
    results = [population_metrics(population, *exact(model, PER_CLASS, seed)) for seed in range(3)]
    for result in results:
        assert (result.samples, result.reference_samples, result.feature_dim) == (n, n * REFERENCE_PER_SAMPLE, 32)
    fd = float(np.mean([r.frechet_distance for r in results]))
    assert 0.4 * floor < fd < 2.0 * floor, (fd, floor)
    assert abs(np.mean([r.inception_score for r in results]) - true_is) < 0.2, (results, true_is)
    assert 2.0 < true_is < CLASSES - 2  # classes overlap: there is room for a verifier to hack


def test_verifier_hacking_raises_is_and_fd(model, population):
    """Keeping the most class-typical samples sharpens p(c|x) (higher IS) but loses diversity (larger FD)."""
    for seed in range(3):
        unselected = population_metrics(population, *exact(model, PER_CLASS, 500 + seed))
        selected = population_metrics(population, *verifier_hacked(model, PER_CLASS, 500 + seed))
        assert selected.inception_score > unselected.inception_score + 2, (selected, unselected)
        assert selected.frechet_distance > 2 * unselected.frechet_distance, (selected, unselected)


def test_reference_follows_the_class_composition(model, population):
    x, labels = exact(model, 200, 3, classes=[4])
    right = population_metrics(population, x, labels)
    wrong = population_metrics(population, x, np.full_like(labels, 6))
    mixture = population_metrics(population, x, np.full_like(labels, -1))
    assert right.frechet_distance * 3 < min(wrong.frechet_distance, mixture.frechet_distance)
    # Unconditional samples compare with the whole mixture.
    whole, _ = exact(model, PER_CLASS, 4)
    unconditional = population_metrics(population, whole, np.full(len(whole), -1))
    assert unconditional.frechet_distance < 2 * population_metrics(population, *exact(model, PER_CLASS, 4)).frechet_distance


def test_backend_is_deterministic_and_order_free_in_its_reference(model):
    backend = make_backend(model)
    samples, labels = exact(model, 20, 11)
    first = backend.population(request(samples, labels))
    assert backend.population(request(samples, labels)) == first  # bit-identical
    shuffled = np.random.default_rng(0).permutation(len(samples))
    again = backend.population(request(samples[shuffled], labels[shuffled]))
    assert again.reference_samples == first.reference_samples
    assert math.isclose(again.frechet_distance, first.frechet_distance, rel_tol=1e-9)
    assert math.isclose(again.inception_score, first.inception_score, rel_tol=1e-9)


def test_two_samples_and_a_few_hundred_are_cheap(model):
    backend = make_backend(model)
    two = backend.population(request(*exact(model, 1, 5, classes=[0, 1])))
    assert math.isfinite(two.frechet_distance) and two.frechet_distance > 0 and two.reference_samples == 40
    one = backend.population(request(*exact(model, 1, 5, classes=[2])))
    assert one.inception_score == pytest.approx(1.0)
    big = request(*exact(model, 50, 6))
    started = time.perf_counter()
    backend.population(big)
    assert time.perf_counter() - started < 0.5


def test_backend_without_a_reference_says_unimplemented(model):
    from noisesearch_server.diffusion_backend import DiffusionBackend

    backend = DiffusionBackend(model, gmm_verifiers(model), max_batch=4, max_concurrency=1, cache_bytes=0)
    with pytest.raises(RequestError) as failure:
        backend.population(request(*exact(model, 1, 5, classes=[0, 1])))
    assert failure.value.code == "UNIMPLEMENTED"


def grpc_samples(pb, samples, labels):
    return [
        pb.Sample(values=x.tolist(), shape=[len(x)], condition=pb.Condition(class_label=int(label)))
        for x, label in zip(samples, labels)
    ]


async def test_population_through_grpc(pb, verifier, model):
    unselected = pb.PopulationRequest(samples=grpc_samples(pb, *exact(model, PER_CLASS, 21)))
    selected = pb.PopulationRequest(samples=grpc_samples(pb, *verifier_hacked(model, PER_CLASS, 21)))
    first = await verifier.Population(unselected, timeout=DEADLINE)
    again = await verifier.Population(unselected, timeout=DEADLINE)
    assert first.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)
    assert (first.samples, first.reference_samples, first.feature_dim) == (400, 8000, 32)
    hacked = await verifier.Population(selected, timeout=DEADLINE)
    assert hacked.inception_score > first.inception_score and hacked.frechet_distance > first.frechet_distance
    unconditional = pb.Sample(values=[0.1] * 16, shape=[16])
    mixed = await verifier.Population(pb.PopulationRequest(samples=[unconditional, *unselected.samples[:3]]), timeout=DEADLINE)
    assert mixed.samples == 4 and mixed.reference_samples == 80


@pytest.mark.parametrize(
    ("bad_fields", "fragment"),
    [
        ({"values": [0.0] * 3, "shape": [3]}, "samples[3].shape: got [3], want [16]"),
        ({"values": [0.0] * 15}, "samples[3].values: got 15 values, want 16"),
        ({"values": [0.0] * 15 + [math.nan]}, "samples[3].values[15]: got nan"),
        ({"values": [math.inf] + [0.0] * 15}, "samples[3].values[0]: got inf"),
        ({"condition": {"class_label": 10}}, "samples[3].condition.class_label: got 10; want a class in [0, 10)"),
        ({"condition": {"class_label": -2}}, "samples[3].condition.class_label: got -2"),
        ({"condition": {"prompt": "a cat"}}, "samples[3].condition.prompt"),
    ],
)
async def test_bad_population_requests_name_the_field(pb, verifier, bad_fields, fragment):
    good = pb.Sample(values=[0.1] * 16, shape=[16], condition=pb.Condition(class_label=1))
    bad = pb.Sample(**{"values": [0.2] * 16, "shape": [16], "condition": {"class_label": 1}, **bad_fields})
    call = verifier.Population(pb.PopulationRequest(samples=[good, good, good, bad]), timeout=DEADLINE)
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, fragment)


async def test_empty_and_oversized_populations_are_refused(pb, verifier):
    await expect_status(
        verifier.Population(pb.PopulationRequest(), timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT, "samples: empty"
    )
    sample = pb.Sample(values=[0.1] * 16, shape=[16])
    too_many = pb.PopulationRequest(samples=[sample] * (MAX_POPULATION_SAMPLES + 1))
    await expect_status(
        verifier.Population(too_many, timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT, "samples: got 10001"
    )

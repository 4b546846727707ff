import numpy as np
import pytest

from noisesearch_server.diffusion_backend import DiffusionBackend
from noisesearch_server.engine import karras_sigmas, solve_sigmas
from noisesearch_server.gmm import gmm_verifiers
from noisesearch_server.lineage import NoiseRecipe, Perturbation, Renoise, Solve
from noisesearch_server.rng import materialize_noise

from conftest import SIGMA_MAX, candidate, evaluate_one, full_solve, make_backend, path_lineage


def varied_candidate(seed: int):
    """Different lineages, classes and guidance scales in one batch."""
    kind = seed % 3
    perturbations = (Perturbation(seed + 500, 0.8), Perturbation(seed + 501, -0.3)) if seed % 2 else ()
    ops = (full_solve(),) if kind == 0 else path_lineage(seed) if kind == 1 else (Solve(SIGMA_MAX, 0.5, "heun", 7),)
    return candidate(
        seed,
        ops=ops,
        label=seed % 10 if seed % 5 else None,
        guidance=(0.0, 1.0, 2.0, 0.5)[seed % 4],
        perturbations=perturbations,
        score_xpred=kind == 2,
    )


def sample_bytes(response):
    return {r.id: r.sample.tobytes() for r in response.results}


def test_results_are_bit_identical_across_batch_sizes_and_positions(model):
    alone = {}
    for seed in range(64):
        alone.update(sample_bytes(evaluate_one(make_backend(model, cache_entries=0), [varied_candidate(seed)], ())))
    for size, offset in [(3, 0), (3, 40), (17, 5), (17, 47), (64, 0), (64, 31)]:
        batch = [varied_candidate((offset + i) % 64) for i in range(size)]
        response = evaluate_one(make_backend(model, cache_entries=0), batch, ())
        assert all(r.error is None for r in response.results)
        assert sample_bytes(response) == {c.id: alone[c.id] for c in batch}


def test_resuming_from_the_cache_is_bit_identical_to_recomputing(model):
    fresh = evaluate_one(make_backend(model, cache_entries=0), [varied_candidate(s) for s in range(1, 13)], ())
    backend = make_backend(model)
    prefixes = []
    for s in range(1, 13):
        c = varied_candidate(s)
        prefixes.append(type(c)(c.id, type(c.lineage)(c.lineage.noise, c.lineage.ops[:-1]), c.condition))
    evaluate_one(backend, prefixes, verifiers=())
    resumed = evaluate_one(backend, [varied_candidate(s) for s in range(1, 13)], ())
    assert resumed.cache_hits == sum(len(varied_candidate(s).lineage.ops) > 1 for s in range(1, 13))
    assert all(r.error is None for r in resumed.results)
    assert sample_bytes(resumed) == sample_bytes(fresh)


class CountingModel:
    """Counts denoiser rows, so executed NFEs can be checked against what really ran."""

    def __init__(self, model):
        self.model = model
        self.spec = model.spec
        self.rows = 0

    def denoise(self, x, sigma, labels, guidance):
        self.rows += len(x)
        return self.model.denoise(x, sigma, labels, guidance)


@pytest.mark.parametrize(
    ("ops", "score_xpred", "nfe"),
    [
        ((full_solve("euler", 10),), False, 10),
        ((full_solve("heun", 10),), False, 19),
        ((Solve(SIGMA_MAX, 1.0, "heun", 5),), False, 10),
        ((Solve(SIGMA_MAX, 1.0, "heun", 5),), True, 11),
        ((full_solve("heun", 10),), True, 19),
        ((), True, 1),
        ((Solve(SIGMA_MAX, 1.0, "euler", 4), Renoise(1.0, 3.0, 9), Solve(3.0, 0.0, "heun", 3)), False, 9),
    ],
)
def test_nfe_accounting(model, ops, score_xpred, nfe):
    counting = CountingModel(model)
    backend = DiffusionBackend(counting, gmm_verifiers(model), max_batch=8, max_concurrency=1, cache_entries=10)
    result = evaluate_one(backend, [candidate(1, ops=ops, score_xpred=score_xpred)], ["gmm-oracle"]).results[0]
    assert (result.nfe_logical, result.nfe_executed, counting.rows) == (nfe, nfe, nfe)


def test_cache_hit_executes_only_the_remaining_ops(model):
    backend = make_backend(model)
    first = Solve(SIGMA_MAX, 1.0, "heun", 5)
    evaluate_one(backend, [candidate(1, ops=(first,))], verifiers=())
    response = evaluate_one(backend, [candidate(1, ops=(first, Solve(1.0, 0.0, "heun", 3)))], verifiers=())
    result = response.results[0]
    assert (result.nfe_logical, result.nfe_executed, response.cache_hits) == (15, 5, 1)
    again = evaluate_one(backend, [candidate(1, ops=(first, Solve(1.0, 0.0, "heun", 3)), score_xpred=True)], ())
    assert (again.results[0].nfe_logical, again.results[0].nfe_executed) == (15, 0)


def test_cache_is_bounded_and_keyed_by_condition(model):
    backend = make_backend(model, cache_entries=2)
    ops = (Solve(SIGMA_MAX, 1.0, "euler", 2),)
    evaluate_one(backend, [candidate(s, ops=ops) for s in range(5)], verifiers=())
    assert len(backend.cache) == 2
    other_class = evaluate_one(backend, [candidate(4, ops=ops, label=5)], verifiers=())
    assert other_class.cache_hits == 0


def test_karras_schedules_end_exactly_where_the_op_says(model):
    sigmas = karras_sigmas(7, 0.002, 80.0, 7.0)
    assert (sigmas[0], sigmas[-1]) == (80.0, 0.002) and np.all(np.diff(sigmas) < 0)
    to_zero = solve_sigmas(Solve(80.0, 0.0, "heun", 10), model.spec)
    assert len(to_zero) == 11 and to_zero[-2] == 0.002 and to_zero[-1] == 0.0
    partway = solve_sigmas(Solve(5.0, 0.7, "heun", 4), model.spec)
    assert len(partway) == 5 and (partway[0], partway[-1]) == (5.0, 0.7)


def test_perturbation_keeps_the_norm_and_sets_the_cosine():
    base = materialize_noise(candidate(3).lineage.noise, 16)
    rotated = materialize_noise(NoiseRecipe(3, (Perturbation(11, 0.6),)), 16)
    assert np.isclose(np.linalg.norm(rotated), np.linalg.norm(base))
    assert np.isclose(rotated @ base / (base @ base), 0.6)


def test_zero_ops_state_is_the_scaled_noise(model):
    result = evaluate_one(make_backend(model), [candidate(5, ops=())], verifiers=()).results[0]
    assert np.array_equal(result.sample, SIGMA_MAX * materialize_noise(candidate(5).lineage.noise, 16))
    assert result.final_sigma == SIGMA_MAX


def test_selfsup_needs_an_xprediction_below_its_sigma(model):
    backend = make_backend(model)
    stops_early = candidate(1, ops=(Solve(SIGMA_MAX, 1.0, "heun", 5),), score_xpred=True)
    response = evaluate_one(backend, [stops_early, candidate(2)], ["gmm-selfsup", "gmm-oracle"])
    failed, scored = response.results
    assert failed.error.code == "FAILED_PRECONDITION" and "0.4" in failed.error.message and not failed.scores
    assert scored.error is None and 0 < scored.scores["gmm-selfsup"] <= 1


def test_selfsup_xprediction_survives_a_cache_resume(model):
    backend = make_backend(model)
    down = Solve(SIGMA_MAX, 0.2, "heun", 8)
    evaluate_one(backend, [candidate(1, ops=(down,))], verifiers=())
    resumed = evaluate_one(backend, [candidate(1, ops=(down, Solve(0.2, 0.0, "euler", 2)))], ["gmm-selfsup"])
    recomputed = evaluate_one(make_backend(model), [candidate(1, ops=(down, Solve(0.2, 0.0, "euler", 2)))], ["gmm-selfsup"])
    assert resumed.cache_hits == 1
    assert resumed.results[0].scores == recomputed.results[0].scores


def test_non_finite_score_is_a_candidate_error(model):
    backend = make_backend(model)

    class Broken:
        spec = backend.verifiers["gmm-oracle"].spec

        def score(self, samples, labels, xpreds):
            return np.array([np.nan] * len(samples))

    backend.engine.verifiers["gmm-oracle"] = Broken()
    result = evaluate_one(backend, [candidate(1)], ["gmm-oracle", "gmm-classifier"]).results[0]
    assert result.error.code == "INTERNAL" and "gmm-oracle" in result.error.message and not result.scores


def test_verifier_timings_count_scored_samples(model):
    response = evaluate_one(make_backend(model), [candidate(s) for s in range(5)], ["gmm-oracle", "gmm-classifier"])
    timings = {t.verifier: t for t in response.verifier_timings}
    assert timings["gmm-oracle"].calls == 5 and timings["gmm-classifier"].seconds > 0

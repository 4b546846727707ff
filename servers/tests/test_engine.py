import math

import numpy as np
import pytest

from noisesearch_server.backend import EvaluateRequest
from noisesearch_server.engine import solve_sigmas
from noisesearch_server.schedules import karras_sigmas
from noisesearch_server.faults import parse_fault_plan
from noisesearch_server.lineage import Cancellation, Perturbation, Renoise, Solve

from conftest import SIGMA_MAX, CountingModel, candidate, evaluate_one, full_solve, make_backend, path_lineage


def philox_normal(seed: int, domain: int, shape) -> np.ndarray:
    """The contract's counter-based draws, written out independently of the server's rng module."""
    return np.random.Generator(np.random.Philox(key=np.array([seed, domain], dtype=np.uint64))).standard_normal(shape)


def varied_candidate(seed: int):
    """Different lineages, solvers, classes and guidance scales in one batch."""
    kind = seed % 4
    perturbations = (Perturbation(seed + 500, 0.8), Perturbation(seed + 501, -0.3)) if seed % 2 else ()
    ops = {
        0: (full_solve(),),
        1: path_lineage(seed),
        2: (Solve(SIGMA_MAX, 0.5, "heun", 7),),
        3: (Solve(SIGMA_MAX, 1.0, "euler_ancestral", 6, seed=seed), Solve(1.0, 0.0, "euler_ancestral", 5, seed=seed + 1)),
    }[kind]
    return candidate(
        seed,
        ops=ops,
        label=seed % 10 if seed % 5 else None,
        guidance=(None, 1.0, 2.0, 0.5, 0.0)[seed % 5],
        perturbations=perturbations,
        score_xpred=kind == 2,
    )


def sample_bytes(response):
    return {r.id: r.sample.tobytes() for r in response.results}


def test_results_are_bit_identical_across_batch_sizes_and_positions(model):
    alone = {}
    for seed in range(64):
        alone.update(sample_bytes(evaluate_one(make_backend(model, cache_bytes=0), [varied_candidate(seed)], ())))
    for size, offset in [(3, 0), (3, 40), (17, 5), (17, 47), (64, 0), (64, 31)]:
        batch = [varied_candidate((offset + i) % 64) for i in range(size)]
        response = evaluate_one(make_backend(model, cache_bytes=0), batch, ())
        assert all(r.error is None for r in response.results)
        assert sample_bytes(response) == {c.id: alone[c.id] for c in batch}


def test_resuming_from_the_cache_is_bit_identical_to_recomputing(model):
    seeds = range(1, 17)
    fresh = evaluate_one(make_backend(model, cache_bytes=0), [varied_candidate(s) for s in seeds], ())
    backend = make_backend(model)
    prefixes = []
    for s in seeds:
        c = varied_candidate(s)
        prefixes.append(type(c)(c.id, type(c.lineage)(c.lineage.noise, c.lineage.ops[:-1]), c.condition))
    evaluate_one(backend, prefixes, verifiers=())
    resumed = evaluate_one(backend, [varied_candidate(s) for s in seeds], ())
    # Every candidate resumes: from its cached noise, or from the state before its last op.
    assert resumed.cache_hits == len(seeds)
    assert all(r.error is None for r in resumed.results)
    assert sample_bytes(resumed) == sample_bytes(fresh)


@pytest.mark.parametrize(
    ("ops", "score_xpred", "nfe"),
    [
        ((full_solve("euler", 10),), False, 10),
        ((full_solve("heun", 10),), False, 19),
        ((Solve(SIGMA_MAX, 1.0, "heun", 5),), False, 10),
        ((Solve(SIGMA_MAX, 1.0, "heun", 5),), True, 11),
        ((full_solve("heun", 10),), True, 19),
        ((Solve(SIGMA_MAX, 0.0, "euler_ancestral", 10, seed=3),), False, 10),
        ((Solve(SIGMA_MAX, 1.0, "euler_ancestral", 4, seed=3),), True, 5),
        ((), True, 1),
        ((Solve(SIGMA_MAX, 1.0, "euler", 4), Renoise(1.0, 3.0, 9), Solve(3.0, 0.0, "heun", 3)), False, 9),
    ],
)
def test_nfe_accounting(model, ops, score_xpred, nfe):
    counting = CountingModel(model)
    backend = make_backend(counting)
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
    state_bytes = 8 * model.config.dim  # one float64 state, no probe or x-prediction attached
    backend = make_backend(model, cache_bytes=2 * state_bytes)
    ops = (Solve(SIGMA_MAX, 1.0, "euler", 2),)
    evaluate_one(backend, [candidate(s, ops=ops) for s in range(5)], verifiers=())
    # Each candidate puts its noise, then its state: 10 states through a cache of 2.
    assert (len(backend.cache), backend.cache.bytes, backend.cache.evictions) == (2, 2 * state_bytes, 8)
    assert (backend.cache.hits, backend.cache.misses) == (0, 5)
    other_class = evaluate_one(backend, [candidate(4, ops=ops, label=5)], verifiers=())
    other_guidance = evaluate_one(backend, [candidate(4, ops=ops, guidance=2.0)], verifiers=())
    assert other_class.cache_hits == 0 and other_guidance.cache_hits == 0


def test_karras_schedules_end_exactly_where_the_op_says(model):
    sigmas = karras_sigmas(7, 0.002, 80.0, 7.0)
    assert (sigmas[0], sigmas[-1]) == (80.0, 0.002) and np.all(np.diff(sigmas) < 0)
    to_zero = solve_sigmas(Solve(SIGMA_MAX, 0.0, "heun", 10), model.spec)
    assert len(to_zero) == 11 and to_zero[-2] == model.spec.sigma_min and to_zero[-1] == 0.0
    partway = solve_sigmas(Solve(5.0, 0.7, "heun", 4), model.spec)
    assert len(partway) == 5 and (partway[0], partway[-1]) == (5.0, 0.7)


def test_zero_ops_state_is_the_scaled_noise(model):
    result = evaluate_one(make_backend(model), [candidate(5, ops=())], verifiers=()).results[0]
    assert np.array_equal(result.sample, SIGMA_MAX * philox_normal(5, 0, 16))
    assert result.final_sigma == SIGMA_MAX


def test_perturbation_rotates_to_the_cosine_and_keeps_the_norm(model):
    backend = make_backend(model)
    base, rotated = evaluate_one(
        backend, [candidate(3, ops=()), candidate(3, ops=(), perturbations=(Perturbation(11, 0.6),))], ()
    ).results
    n, m = base.sample / SIGMA_MAX, rotated.sample / SIGMA_MAX
    assert np.isclose(np.linalg.norm(m), np.linalg.norm(n))
    assert np.isclose(m @ n / (n @ n), 0.6)
    # The rotation stays in the plane of the noise and the perturbation's direction, Philox([11, 1]).
    direction = philox_normal(11, 1, 16)
    orthogonal = direction - (direction @ n) / (n @ n) * n
    expected = 0.6 * n + 0.8 * np.linalg.norm(n) * orthogonal / np.linalg.norm(orthogonal)
    np.testing.assert_allclose(m, expected, rtol=1e-12, atol=1e-12)


def reference_euler_ancestral(model, x, sigmas, label, seed):
    """k-diffusion's sample_euler_ancestral (eta = 1) written out step by step, with the contract's noises."""
    eps = philox_normal(seed, 3, (len(sigmas) - 1, len(x)))
    for t, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = model.posterior_mean(x[None], s, np.array([label]), np.array([1.0]))[0]
        d = (x - denoised) / s
        sigma_up = min(s_next, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        if s_next == 0 or sigma_up == 0 or sigma_down < model.spec.sigma_min:
            x = x + d * (s_next - s)
        else:
            x = x + d * (sigma_down - s) + sigma_up * eps[t]
    return x


def karras(n, sigma_min, sigma_max, rho):
    return [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(n)]


def test_euler_ancestral_follows_k_diffusion(model):
    rho, sigma_min = model.spec.rho, model.spec.sigma_min
    to_one = Solve(SIGMA_MAX, 1.0, "euler_ancestral", 6, seed=41)
    to_zero = Solve(1.0, 0.0, "euler_ancestral", 4, seed=42)
    result = evaluate_one(make_backend(model), [candidate(8, ops=(to_one, to_zero), label=4)], ()).results[0]
    x = SIGMA_MAX * philox_normal(8, 0, 16)
    x = reference_euler_ancestral(model, x, karras(7, 1.0, SIGMA_MAX, rho), 4, 41)
    x = reference_euler_ancestral(model, x, karras(4, sigma_min, 1.0, rho) + [0.0], 4, 42)
    np.testing.assert_allclose(result.sample, x, rtol=1e-9, atol=1e-9)
    # The seed matters, and only to euler_ancestral.
    other_seed = Solve(1.0, 0.0, "euler_ancestral", 4, seed=43)
    other = evaluate_one(make_backend(model), [candidate(8, ops=(to_one, other_seed), label=4)], ()).results[0]
    assert not np.allclose(other.sample, result.sample)


def test_guidance_zero_samples_the_unconditional_model(model):
    backend = make_backend(model)
    unguided, unconditional, default = evaluate_one(
        backend, [candidate(6, label=3, guidance=0.0), candidate(6, label=None), candidate(6, label=3)], ()
    ).results
    assert np.array_equal(unguided.sample, unconditional.sample)
    assert not np.allclose(default.sample, unconditional.sample)


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


def test_non_finite_score_is_a_candidate_error_after_all_its_work(model):
    backend = make_backend(model)

    class Broken:
        spec = backend.verifiers["gmm-oracle"].spec

        def score(self, samples, rows, probes):
            return np.array([np.nan] * len(samples))

    backend.engine.verifiers["gmm-oracle"] = Broken()
    result = evaluate_one(backend, [candidate(1, ops=(Solve(SIGMA_MAX, 1.0, "heun", 3),), score_xpred=True)],
                          ["gmm-oracle", "gmm-classifier"]).results[0]
    assert result.error.code == "INTERNAL" and "gmm-oracle" in result.error.message and not result.scores
    # Scoring comes after everything else: all of it was spent (3 Heun steps to 1.0, then the x-prediction).
    assert (result.nfe_logical, result.nfe_executed) == (7, 7)
    assert result.state_key and result.sample is None


def test_verifier_timings_count_scored_samples(model):
    response = evaluate_one(make_backend(model), [candidate(s) for s in range(5)], ["gmm-oracle", "gmm-classifier"])
    timings = {t.verifier: t for t in response.verifier_timings}
    assert timings["gmm-oracle"].calls == 5 and timings["gmm-classifier"].seconds > 0


# Keys and bases.


def test_keys_are_16_bytes_and_a_state_continues_from_its_key(model):
    backend = make_backend(model)
    to_one, to_zero = Solve(SIGMA_MAX, 1.0, "heun", 5), Solve(1.0, 0.0, "euler", 3)
    first = evaluate_one(backend, [candidate(2, ops=(to_one,))], ()).results[0]
    assert len(first.state_key) == 16 and len(first.noise_key) == 16 and first.state_key != first.noise_key
    based = evaluate_one(backend, [candidate(99, ops=(to_zero,), base=first.state_key)], ["gmm-oracle"]).results[0]
    whole = evaluate_one(make_backend(model), [candidate(2, ops=(to_one, to_zero))], ["gmm-oracle"]).results[0]
    assert based.sample.tobytes() == whole.sample.tobytes() and based.scores == whole.scores
    # The same state has the same key whichever way it was reached; the noise seed of a based candidate is ignored.
    assert (based.state_key, based.noise_key) == (whole.state_key, whole.noise_key) == (based.state_key, first.noise_key)
    # A based candidate pays for its own ops only.
    assert (based.nfe_logical, based.nfe_executed, whole.nfe_logical) == (3, 3, 13)


def test_a_based_candidate_without_ops_is_the_base_state(model):
    backend = make_backend(model)
    first = evaluate_one(backend, [candidate(2, ops=(Solve(SIGMA_MAX, 0.0, "heun", 4),))], ["gmm-oracle"]).results[0]
    again = evaluate_one(backend, [candidate(0, ops=(), base=first.state_key)], ["gmm-oracle"]).results[0]
    assert again.sample.tobytes() == first.sample.tobytes() and again.scores == first.scores
    assert (again.nfe_logical, again.nfe_executed, again.state_key) == (0, 0, first.state_key)


def test_perturbing_a_cached_noise_is_the_whole_recipe(model):
    backend = make_backend(model)
    ops = (Solve(SIGMA_MAX, 0.0, "euler", 4),)
    pivot = evaluate_one(backend, [candidate(5, ops=ops, perturbations=(Perturbation(1, 0.9),))], ()).results[0]
    step = (Perturbation(2, 0.7),)
    neighbour = evaluate_one(backend, [candidate(0, ops=ops, perturbations=step, base=pivot.noise_key)], ()).results[0]
    whole_recipe = (Perturbation(1, 0.9), Perturbation(2, 0.7))
    fresh = evaluate_one(make_backend(model), [candidate(5, ops=ops, perturbations=whole_recipe)], ()).results[0]
    assert neighbour.sample.tobytes() == fresh.sample.tobytes()
    assert (neighbour.noise_key, neighbour.state_key) == (fresh.noise_key, fresh.state_key)
    assert neighbour.noise_key != pivot.noise_key and neighbour.nfe_logical == 4
    # A base noise with nothing added is the noise state itself.
    noise = evaluate_one(backend, [candidate(0, ops=(), base=pivot.noise_key)], ()).results[0]
    assert noise.final_sigma == SIGMA_MAX and noise.state_key == noise.noise_key == pivot.noise_key


def test_a_whole_lineage_resumes_from_its_longest_cached_noise(model):
    counting = CountingModel(model)
    backend = make_backend(counting)
    evaluate_one(backend, [candidate(5, ops=(), perturbations=(Perturbation(1, 0.9),))], ())
    longer = candidate(5, ops=(Solve(SIGMA_MAX, 0.0, "euler", 3),), perturbations=(Perturbation(1, 0.9), Perturbation(2, 0.5)))
    response = evaluate_one(backend, [longer], ())
    fresh = evaluate_one(make_backend(model, cache_bytes=0), [longer], ())
    assert response.cache_hits == 1 and counting.rows == 3
    assert sample_bytes(response) == sample_bytes(fresh)


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        ({"base": bytes(16)}, "NOT_FOUND", "candidates[1].base: not held by this server"),
        ({"label": 4}, "INVALID_ARGUMENT", "candidates[1].condition: got class 4"),
        ({"guidance": 2.0}, "INVALID_ARGUMENT", "candidates[1].condition: got class 3 with guidance 2.0"),
        ({"perturbations": (Perturbation(1, 0.5),)}, "INVALID_ARGUMENT", "candidates[1].lineage.noise.perturbations: the base is a state"),
        ({"ops": (Solve(2.0, 0.0, "euler", 2),)}, "INVALID_ARGUMENT", "candidates[1].lineage.ops[0].solve.sigma_from: got 2.0; want 1.0"),
    ],
)
def test_a_bad_base_fails_its_candidate_alone_at_no_cost(model, change, code, fragment):
    backend = make_backend(model)
    state = evaluate_one(backend, [candidate(2, ops=(Solve(SIGMA_MAX, 1.0, "euler", 2),))], ()).results[0].state_key
    fields = {"ops": (Solve(1.0, 0.0, "euler", 2),), "base": state, **change}
    good = candidate(7, ops=(full_solve("euler", 2),))
    results = evaluate_one(backend, [good, candidate(2, **fields), good], ["gmm-oracle"]).results
    failed = results[1]
    assert failed.error.code == code and failed.error.message.startswith(fragment), failed.error.message
    assert (failed.nfe_logical, failed.nfe_executed, failed.state_key, failed.noise_key) == (0, 0, b"", b"")
    assert results[0].error is None and results[2].error is None


def test_a_solve_from_a_scored_xprediction_reuses_it(model):
    counting = CountingModel(model)
    backend = make_backend(counting)
    to_one = Solve(SIGMA_MAX, 1.0, "heun", 3)
    scored = evaluate_one(backend, [candidate(4, ops=(to_one,), score_xpred=True)], ["gmm-oracle"]).results[0]
    assert (scored.nfe_logical, scored.nfe_executed) == (7, 7)
    for solver, logical in [("euler", 4), ("heun", 7), ("euler_ancestral", 4)]:
        finish = Solve(1.0, 0.0, solver, 4, seed=9 if solver == "euler_ancestral" else 0)
        rows_before = counting.rows
        based = evaluate_one(backend, [candidate(0, ops=(finish,), base=scored.state_key)], ()).results[0]
        whole = evaluate_one(make_backend(model, cache_bytes=0), [candidate(4, ops=(to_one, finish))], ()).results[0]
        assert based.sample.tobytes() == whole.sample.tobytes(), solver
        assert (based.nfe_logical, based.nfe_executed, counting.rows - rows_before) == (logical, logical - 1, logical - 1)
    # Scoring the x-prediction again costs nothing either.
    again = evaluate_one(backend, [candidate(0, ops=(), base=scored.state_key, score_xpred=True)], ["gmm-oracle"]).results[0]
    assert again.sample.tobytes() == scored.sample.tobytes() and (again.nfe_logical, again.nfe_executed) == (1, 0)


# Failures and abandoned requests.


class FailingModel(CountingModel):
    """Raises for any batch that holds a row of `label` at a sigma below `below`."""

    def __init__(self, model, label, below):
        super().__init__(model)
        self.label, self.below = label, below

    def denoise(self, x, sigma, rows):
        if sigma < self.below and np.any(rows.labels == self.label):
            raise ValueError(f"no class {self.label} below sigma {self.below}")
        return super().denoise(x, sigma, rows)


def test_a_model_failure_fails_only_its_row_and_reports_the_work_done(model):
    failing = FailingModel(model, label=7, below=1.5)
    backend = make_backend(failing)
    # Op 0 stays above sigma 1.5; op 1 (2.0 -> 0.5 in 2 steps) evaluates at 2.0, then below 1.5.
    ops = (Solve(SIGMA_MAX, 2.0, "euler", 3), Solve(2.0, 0.5, "euler", 2))
    bad, good = evaluate_one(backend, [candidate(1, ops=ops, label=7), candidate(2, ops=ops, label=2)], ["gmm-oracle"]).results
    assert bad.error.code == "INTERNAL"
    assert bad.error.message == "candidates[0]: solve failed: ValueError: no class 7 below sigma 1.5"
    # Logical: op 0 only. Executed: op 0, op 1's first step, then its failed second step batched and alone.
    assert (bad.nfe_logical, bad.nfe_executed, bad.state_key) == (3, 6, b"")
    assert len(bad.noise_key) == 16
    assert good.error is None and "gmm-oracle" in good.scores
    # The good row ran in the failed batched call too, then alone.
    assert (good.nfe_logical, good.nfe_executed) == (5, 6)
    alone = evaluate_one(make_backend(model), [candidate(2, ops=ops, label=2)], ["gmm-oracle"]).results[0]
    assert alone.sample.tobytes() == good.sample.tobytes()


def injected(rules, seed=0):
    return parse_fault_plan({"seed": seed, "rules": rules})


@pytest.mark.parametrize(
    ("stage", "logical", "executed", "prefix"),
    [("solve", 0, 0, "solve failed"), ("xpred", 4, 4, "x-prediction failed"), ("verifier", 5, 5, "verifier 'gmm-oracle' failed")],
)
def test_a_batched_call_that_raises_is_retried_row_by_row(model, stage, logical, executed, prefix):
    backend = make_backend(model, faults=injected([{"match": {"id": "^c1$"}, "raise": stage}]))
    ops = (Solve(SIGMA_MAX, 1.0, "euler", 4),)
    results = evaluate_one(backend, [candidate(s, ops=ops, score_xpred=True) for s in range(3)], ["gmm-oracle"]).results
    hit = results[1]
    assert hit.error.code == "INTERNAL"
    assert hit.error.message.startswith(f"candidates[1]: {prefix}: InjectedFault: injected {stage} failure (faults.rules[0])")
    # 4 Euler steps, then the x-prediction, then the verifier: the hit row keeps what came before its stage.
    # An injected raise comes before the model runs, so the raising calls themselves execute nothing.
    assert (hit.nfe_logical, hit.nfe_executed) == (logical, executed)
    for other in (results[0], results[2]):
        assert other.error is None and "gmm-oracle" in other.scores
        assert (other.nfe_logical, other.nfe_executed) == (5, 5)


def test_an_abandoned_request_stops_between_steps_and_the_rest_goes_on(model):
    abandoned, kept = Cancellation(), Cancellation()

    class CancellingModel(CountingModel):
        def denoise(self, x, sigma, rows):
            if self.rows >= 20:
                abandoned.cancel()
            return super().denoise(x, sigma, rows)

    counting = CancellingModel(model)
    backend = make_backend(counting)
    ops = (Solve(SIGMA_MAX, 1.0, "euler", 10), Solve(1.0, 0.0, "euler", 10))
    requests = [
        EvaluateRequest("gmm", (candidate(1, ops=ops),), (), True, abandoned),
        EvaluateRequest("gmm", (candidate(2, ops=ops),), (), True, kept),
    ]
    gone, done = backend.evaluate(requests)
    result = gone.results[0]
    assert result.error.code == "CANCELLED" and "cancelled" in result.error.message
    # Both rows ran together for 10 steps, then the cancelled one stopped after one more step of op 1.
    assert (result.nfe_logical, result.nfe_executed) == (10, 11)
    assert done.results[0].error is None and done.results[0].nfe_executed == 20
    assert counting.rows == 2 * 11 + 9


def test_a_request_past_its_deadline_runs_nothing(model):
    counting = CountingModel(model)
    expired = Cancellation(deadline=0.0)
    response = evaluate_one(make_backend(counting), [candidate(1)], (), cancellation=expired)
    assert response.results[0].error.code == "DEADLINE_EXCEEDED" and counting.rows == 0

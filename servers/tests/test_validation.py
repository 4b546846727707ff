"""Candidate-level validation through the backend: the bad candidate fails alone, naming its field."""

import math

import pytest

from noisesearch_server.engine import SOLVERS
from noisesearch_server.lineage import Cancellation, Candidate, Condition, Job, Lineage, NoiseRecipe, Perturbation, Renoise, Solve
from noisesearch_server.validation import validate_candidate

from conftest import SIGMA_MAX, candidate, evaluate_one, full_solve, make_backend

NAN = math.nan


def with_ops(*ops):
    return candidate(7, ops=ops)


def chained_ops(count):
    """`count` ops that chain: down to 1, then up to 2 and back down, over and over."""
    return (Solve(SIGMA_MAX, 1.0, "euler", 1),) + (Renoise(1.0, 2.0, 1), Solve(2.0, 1.0, "euler", 1)) * ((count - 1) // 2)


CASES = [
    (Candidate("x", Lineage(None, (full_solve(),)), Condition(class_label=1)), (), "lineage.noise"),
    (candidate(7, perturbations=(Perturbation(1, NAN),)), (), "lineage.noise.perturbations[0].cosine"),
    (candidate(7, perturbations=(Perturbation(1, 0.5), Perturbation(2, 1.5))), (), "lineage.noise.perturbations[1].cosine"),
    (with_ops(Solve(SIGMA_MAX, NAN, "heun", 3)), (), "lineage.ops[0].solve.sigma_to"),
    (with_ops(Solve(math.inf, 0.0, "heun", 3)), (), "lineage.ops[0].solve.sigma_from"),
    (with_ops(Solve(SIGMA_MAX, 0.001, "heun", 3)), (), "lineage.ops[0].solve.sigma_to"),
    (with_ops(Solve(SIGMA_MAX, -1.0, "heun", 3)), (), "lineage.ops[0].solve.sigma_to"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3), Solve(1.0, 2.0, "heun", 3)), (), "lineage.ops[1].solve.sigma_to"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3), Renoise(1.0, 0.5, 4)), (), "lineage.ops[1].renoise.sigma_to"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3), Renoise(1.0, 120.0, 4)), (), "lineage.ops[1].renoise.sigma_to"),
    (with_ops(Solve(60.0, 1.0, "heun", 3)), (), "lineage.ops[0].solve.sigma_from"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3), Solve(1.5, 0.0, "heun", 3)), (), "lineage.ops[1].solve.sigma_from"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 0)), (), "lineage.ops[0].solve.steps"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "dpm++", 3)), (), "lineage.ops[0].solve.solver"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3, "linear")), (), "lineage.ops[0].solve.schedule"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3, seed=4)), (), "lineage.ops[0].solve.seed"),
    (with_ops(Solve(SIGMA_MAX, 1.0, "euler", 10_001)), (), "lineage.ops[0].solve.steps"),
    (with_ops(*chained_ops(100_001), Renoise(1.0, 2.0, 1)), (), "lineage.ops"),
    (candidate(7, perturbations=(Perturbation(1, 0.5),) * 100_001), (), "lineage.noise.perturbations"),
    (Candidate("x", Lineage(None, ()), Condition(class_label=1), base=b"short"), (), "base"),
    (with_ops(full_solve(), None), (), "lineage.ops[1]"),
    (candidate(7, label=10), (), "condition.class_label"),
    (candidate(7, label=-1), (), "condition.class_label"),
    (Candidate("x", Lineage(NoiseRecipe(1), ()), Condition(prompt="a cat")), (), "condition.prompt"),
    (candidate(7, label=None), ("gmm-selfsup", "gmm-oracle"), "condition"),
    (candidate(7, guidance=-0.5), (), "condition.guidance_scale"),
    (candidate(7, guidance=NAN), (), "condition.guidance_scale"),
]


@pytest.mark.parametrize(("bad", "verifiers", "path"), CASES)
def test_bad_candidate_fails_alone_naming_its_field(model, bad, verifiers, path):
    good = candidate(1, ops=(full_solve("euler", 3),))
    response = evaluate_one(make_backend(model), [good, bad, good], verifiers)
    first, failed, last = response.results
    assert failed.error is not None and failed.error.code == "INVALID_ARGUMENT"
    assert failed.error.message.startswith(f"candidates[1].{path}:"), failed.error.message
    assert not failed.scores and failed.sample is None
    assert first.error is None and last.error is None and first.sample is not None


def test_limits_are_inclusive(model):
    at_limits = [
        with_ops(Solve(SIGMA_MAX, 1.0, "euler", 10_000)),
        with_ops(*chained_ops(99_999), Renoise(1.0, 2.0, 1)),
        candidate(7, ops=(), perturbations=(Perturbation(1, 0.5),) * 100_000),
    ]
    for fine in at_limits:
        assert isinstance(validate_candidate(fine, 0, model.spec, SOLVERS, (), False, Cancellation()), Job)


def test_schedule_karras_and_empty_are_the_same_trajectory(model):
    backend = make_backend(model)
    named = evaluate_one(backend, [with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3, "karras"))], ())
    default = evaluate_one(backend, [with_ops(Solve(SIGMA_MAX, 1.0, "heun", 3, ""))], ())
    assert default.cache_hits == 1 and named.results[0].sample.tobytes() == default.results[0].sample.tobytes()


def test_first_sigma_within_relative_tolerance_of_sigma_max_is_accepted(model):
    response = evaluate_one(make_backend(model), [with_ops(Solve(SIGMA_MAX * (1 + 1e-12), 0.0, "euler", 2))], ())
    assert response.results[0].error is None

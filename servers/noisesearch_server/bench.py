"""The Gaussian-mixture backend's throughput through the engine, side by side with a plain numpy loop computing
the same class-conditional posterior mean, and the server cost of a small search; or, with `frechet`, how far
the default sampler's samples are from exact draws, class by class.

    python -m noisesearch_server.bench              (BENCH_QUICK=1: fewer, shorter rounds)
    python -m noisesearch_server.bench frechet [--solver heun --steps 10 --sigma-min 0.002 --sigma-max 80 --rho 7]

stdout holds only the tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from .backend import EvaluateRequest
from .diffusion_backend import DiffusionBackend
from .engine import solve_sigmas
from .gmm import GaussianMixture, GmmConfig, GmmPopulation, gmm_verifiers
from .lineage import Candidate, Condition, Lineage, NoiseRecipe, Solve, solve_nfe
from .population import frechet_distance, gaussian_fit
from .rng import base_noise

QUICK = os.environ.get("BENCH_QUICK") == "1"
ENGINE_BATCHES = (1, 16, 64, 128, 256)
COMPARED_BATCH = 64
TARGET_RATIO = 0.8
# Medians over rounds; within a round the subjects run in turn, a batch each, so that a busy spell of the
# machine hits both sides of the ratio alike.
ROUNDS = 2 if QUICK else 5
ROUND_SECONDS = 0.15 if QUICK else 0.4
SEARCH_CANDIDATES = 105
AGREEMENT = 1e-10


def full_generation(seed: int, config: GmmConfig) -> Candidate:
    solve = Solve(config.sigma_max, 0.0, config.default_solver, config.default_steps)
    return Candidate(
        id=str(seed),
        lineage=Lineage(NoiseRecipe(seed), (solve,)),
        condition=Condition(class_label=seed % config.num_classes),
    )


def plain_posterior_mean(model: GaussianMixture, x: np.ndarray, sigma: float, labels: np.ndarray) -> np.ndarray:
    """E[x0 | x_sigma, class] as one would write it in numpy: the class's components' log-densities under
    N(mu_k, s^2 I + U_k U_k^T + sigma^2 I) by Woodbury, their softmax, and each component's linear shrinkage
    x - sigma^2 (Sigma_k + sigma^2 I)^-1 (x - mu_k), weighted."""
    config = model.config
    components = labels[:, None] * config.components_per_class + np.arange(config.components_per_class)
    means, factors = model.means[components], model.factors[components]  # (B, n, D), (B, n, r, D)
    a = config.isotropic_std**2 + sigma * sigma
    small = a * np.eye(config.rank) + model.factor_gram[components]  # a I + U^T U, (B, n, r, r)
    diff = x[:, None, :] - means
    projected = np.einsum("bkrd,bkd->bkr", factors, diff)
    coefficients = np.linalg.solve(small, projected[..., None])[..., 0]
    quadratic = (np.einsum("bkd,bkd->bk", diff, diff) - np.einsum("bkr,bkr->bk", projected, coefficients)) / a
    log_density = -0.5 * (quadratic + np.linalg.slogdet(small)[1] + (config.dim - config.rank) * math.log(a))
    weights = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    scaled_residual = diff - np.einsum("bkr,bkrd->bkd", coefficients, factors)  # a (Sigma_k + sigma^2 I)^-1 (x - mu_k)
    return x - (sigma * sigma / a) * np.einsum("bk,bkd->bd", weights, scaled_residual)


def plain_heun(model: GaussianMixture, noise: np.ndarray, labels: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The engine's Heun step, written as a bare loop over the schedule."""
    x = sigmas[0] * noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - plain_posterior_mean(model, x, sigma, labels)) / sigma
        if sigma_next > 0:
            x_euler = x + d * (sigma_next - sigma)
            d_next = (x_euler - plain_posterior_mean(model, x_euler, sigma_next, labels)) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        else:
            x = x + d * (sigma_next - sigma)
    return x


def timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    nfes = run()
    return nfes, time.perf_counter() - started


def nfe_rates(subjects: list[Callable[[], int]]) -> list[float]:
    """Candidate-NFEs per second of wall time of each subject, running them in turn, one call each, until each
    has run for at least ROUND_SECONDS: neighbours in time share whatever else the machine is doing."""
    nfes, seconds = [0] * len(subjects), [0.0] * len(subjects)
    while min(seconds) < ROUND_SECONDS:
        for i, run in enumerate(subjects):
            done, elapsed = timed(run)
            nfes[i] += done
            seconds[i] += elapsed
    return [n / s for n, s in zip(nfes, seconds)]


def throughput() -> None:
    config = GmmConfig()
    model = GaussianMixture(config)
    solve = Solve(config.sigma_max, 0.0, config.default_solver, config.default_steps)
    sigmas = solve_sigmas(solve, model.spec)
    nfe_per_generation = solve_nfe(solve)
    seeds = itertools.count()

    def backend() -> DiffusionBackend:
        return DiffusionBackend(model, gmm_verifiers(model), max_batch=max(ENGINE_BATCHES), max_concurrency=1, cache_bytes=0)

    def engine_run(engine: DiffusionBackend, size: int, verifiers: tuple[str, ...] = (), samples: bool = False):
        candidates = tuple(full_generation(next(seeds), config) for _ in range(size))
        return candidates, engine.evaluate([EvaluateRequest(model.spec.name, candidates, verifiers, samples)])[0]

    engine = backend()
    # The plain loop must compute what the server computes: the same posterior means along the schedule, and
    # the same samples from the same noises.
    candidates, response = engine_run(engine, COMPARED_BATCH, samples=True)
    noise = np.stack([base_noise(int(c.lineage.noise.seed), config.dim) for c in candidates])
    labels = np.array([c.condition.class_label for c in candidates])
    sample_gap = float(np.abs(plain_heun(model, noise, labels, sigmas) - np.stack([r.sample for r in response.results])).max())
    rng = np.random.default_rng(0)
    denoiser_gap = max(
        float(np.abs(plain_posterior_mean(model, x, sigma, labels) - model.posterior_mean(x, sigma, labels, np.ones(len(x)))).max())
        for sigma in sigmas[:-1]
        for x in [model.sample(labels, rng) + sigma * rng.standard_normal((len(labels), config.dim))]
    )
    if max(sample_gap, denoiser_gap) > AGREEMENT:
        sys.exit(f"the plain numpy loop disagrees with the server: denoiser {denoiser_gap:.1e}, samples {sample_gap:.1e} "
                 f"(want <= {AGREEMENT:.0e}); the comparison would not be fair")

    def engine_subject(size: int) -> Callable[[], int]:
        def run() -> int:
            engine_run(engine, size)
            return size * nfe_per_generation

        return run

    plain_noise = np.random.default_rng(1).standard_normal((COMPARED_BATCH, config.dim))
    plain_labels = np.arange(COMPARED_BATCH) % config.num_classes

    def plain() -> int:
        plain_heun(model, plain_noise, plain_labels, sigmas)
        return COMPARED_BATCH * nfe_per_generation

    engine_rates: dict[int, list[float]] = {size: [] for size in ENGINE_BATCHES}
    compared: list[tuple[float, float]] = []
    for round_index in range(ROUNDS):
        print(f"model bench: round {round_index + 1} of {ROUNDS}", file=sys.stderr, flush=True)
        for size, rate in zip(ENGINE_BATCHES, nfe_rates([engine_subject(size) for size in ENGINE_BATCHES])):
            engine_rates[size].append(rate)
        compared.append(tuple(nfe_rates([engine_subject(COMPARED_BATCH), plain])))
    median = {size: statistics.median(rates) for size, rates in engine_rates.items()}
    ratios = [server / bare for server, bare in compared]
    ratio = statistics.median(ratios)
    plain_rate = statistics.median(bare for _, bare in compared)

    print(f"Embedded model (gmm: dim {config.dim}, {config.num_classes} classes x {config.components_per_class} components, "
          f"rank {config.rank}): full generations, {config.default_solver} {config.default_steps} steps = "
          f"{nfe_per_generation} NFEs, one class each, guidance 1.\nCandidate-NFEs per second of wall time, median of "
          f"{ROUNDS} rounds, each running the subjects in turn, a batch each, until each has had >= {ROUND_SECONDS} s:")
    print(f"  {'':<52} {'batch':>5} {'NFE/s':>9} {'ms/batch':>9}")
    for size in ENGINE_BATCHES:
        print(f"  {'server: DiffusionBackend.evaluate, cache off':<52} {size:>5} {median[size]:>9,.0f} "
              f"{1000 * size * nfe_per_generation / median[size]:>9.2f}")
    print(f"  {'plain numpy Heun loop (class components, einsum)':<52} {COMPARED_BATCH:>5} {plain_rate:>9,.0f} "
          f"{1000 * COMPARED_BATCH * nfe_per_generation / plain_rate:>9.2f}")
    print(f"  the plain loop agrees with the server: posterior means within {denoiser_gap:.0e} at all "
          f"{len(sigmas) - 1} sigmas, samples within {sample_gap:.0e}")
    print(f"  server / plain numpy loop at batch {COMPARED_BATCH} (alternated, a batch each): {ratio:.2f} (median; "
          f"rounds {', '.join(f'{r:.2f}' for r in ratios)}); target >= {TARGET_RATIO}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")

    engine = backend()
    started = time.perf_counter()
    total_nfe = 0
    for offset in range(0, SEARCH_CANDIDATES, COMPARED_BATCH):
        searched, _ = engine_run(engine, min(COMPARED_BATCH, SEARCH_CANDIDATES - offset), ("gmm-classifier",))
        total_nfe += len(searched) * nfe_per_generation
    elapsed = time.perf_counter() - started
    print(f"random search: {SEARCH_CANDIDATES} candidates, {total_nfe} NFEs, scored by gmm-classifier, "
          f"in batches of {COMPARED_BATCH}: {elapsed:.3f} s of server time")


FRECHET_SAMPLES = 3000
SAMPLER_DRAWS = 3
FLOOR_PAIRS = 20
EXACT_SETS = 8
REFERENCE_SAMPLES = 100_000


def frechet(config: GmmConfig) -> None:
    """Per class, in the raw space and the population features: the floor E[FD_n(exact, exact)] at
    n = FRECHET_SAMPLES (mean of FLOOR_PAIRS pairs), the sampler's bias b (SAMPLER_DRAWS x n samples pooled,
    minus the mean of EXACT_SETS exact sets of that size, both against REFERENCE_SAMPLES exact draws), and
    (floor + b) / floor, the estimate of E[FD_n(sampler, exact)] / E[FD_n(exact, exact)]; see
    tests/test_sampler.py for why this beats comparing a few draws of FD_n."""
    model = GaussianMixture(config)
    spaces = {"raw": lambda x: x, "features": GmmPopulation(model).features}
    backend = DiffusionBackend(model, [], max_batch=FRECHET_SAMPLES, max_concurrency=1, cache_bytes=0)
    solve = Solve(config.sigma_max, 0.0, config.default_solver, config.default_steps)
    print(f"{config.default_solver}, {config.default_steps} steps ({solve_nfe(solve)} NFEs), sigma in "
          f"[{config.sigma_min}, {config.sigma_max}], rho {config.rho}; n = {FRECHET_SAMPLES}")
    print(f"{'class':>5} " + " ".join(f"{space + ': floor':>15} {'bias':>8} {'ratio':>6}" for space in spaces))
    pooled = SAMPLER_DRAWS * FRECHET_SAMPLES
    for label in range(config.num_classes):
        seeds = range(label * pooled, (label + 1) * pooled)
        candidates = [Candidate(str(s), Lineage(NoiseRecipe(s), (solve,)), Condition(class_label=label)) for s in seeds]
        rows = []
        for offset in range(0, pooled, FRECHET_SAMPLES):
            request = EvaluateRequest(model.spec.name, tuple(candidates[offset : offset + FRECHET_SAMPLES]), (), True)
            rows.extend(result.sample for result in backend.evaluate([request])[0].results)
        samples = np.stack(rows)
        row = [f"{label:>5}"]
        for features in spaces.values():
            rng = np.random.default_rng([label, 31])

            def exact(count: int) -> np.ndarray:
                return features(model.sample(np.full(count, label), rng))

            floor = np.mean([_fd(exact(FRECHET_SAMPLES), exact(FRECHET_SAMPLES)) for _ in range(FLOOR_PAIRS)])
            reference = exact(REFERENCE_SAMPLES)
            bias = _fd(features(samples), reference) - np.mean([_fd(exact(pooled), reference) for _ in range(EXACT_SETS)])
            row.append(f"{floor:>15.4f} {bias:>+8.4f} {(floor + bias) / floor:>6.3f}")
        print(" ".join(row), flush=True)


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m noisesearch_server.bench")
    parser.add_argument("mode", nargs="?", choices=("throughput", "frechet"), default="throughput")
    defaults = GmmConfig()
    parser.add_argument("--solver", default=defaults.default_solver)
    parser.add_argument("--steps", type=int, default=defaults.default_steps)
    parser.add_argument("--sigma-min", type=float, default=defaults.sigma_min)
    parser.add_argument("--sigma-max", type=float, default=defaults.sigma_max)
    parser.add_argument("--rho", type=float, default=defaults.rho)
    args = parser.parse_args(argv)
    if args.mode == "throughput":
        throughput()
        return
    config = dataclasses.replace(
        defaults, default_solver=args.solver, default_steps=args.steps, sigma_min=args.sigma_min,
        sigma_max=args.sigma_max, rho=args.rho,
    )
    problems = config.problems()
    if problems:
        parser.error("; ".join(problems))
    frechet(config)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Throughput of the Gaussian-mixture backend through the engine, and the server cost of a small search;
or, with `frechet`, how far the default sampler's samples are from exact draws, class by class.

    python -m noisesearch_server.bench
    python -m noisesearch_server.bench frechet [--solver heun --steps 10 --sigma-min 0.002 --sigma-max 80 --rho 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time

import numpy as np

from .backend import EvaluateRequest
from .diffusion_backend import DiffusionBackend
from .gmm import GaussianMixture, GmmConfig, GmmPopulation, gmm_verifiers
from .lineage import Candidate, Condition, Lineage, NoiseRecipe, Solve, solve_nfe
from .population import frechet_distance, gaussian_fit

BATCH_SIZES = (1, 16, 64)
SEARCH_CANDIDATES = 105
MIN_SECONDS = 0.5


def full_generation(seed: int, config: GmmConfig) -> Candidate:
    solve = Solve(config.sigma_max, 0.0, config.default_solver, config.default_steps)
    return Candidate(
        id=str(seed),
        lineage=Lineage(NoiseRecipe(seed), (solve,)),
        condition=Condition(class_label=seed % config.num_classes),
    )


def throughput() -> None:
    config = GmmConfig()
    model = GaussianMixture(config)
    seeds = itertools.count()

    def backend() -> DiffusionBackend:
        return DiffusionBackend(model, gmm_verifiers(model), max_batch=64, max_concurrency=1, cache_bytes=0)

    def run(engine: DiffusionBackend, size: int, verifiers: tuple[str, ...] = ()) -> int:
        candidates = tuple(full_generation(next(seeds), config) for _ in range(size))
        engine.evaluate([EvaluateRequest(model.spec.name, candidates, verifiers)])
        return sum(solve_nfe(c.lineage.ops[0]) for c in candidates)

    nfe_per_generation = solve_nfe(full_generation(0, config).lineage.ops[0])
    print(f"gmm: dim {config.dim}, {config.num_classes} classes x {config.components_per_class} components, "
          f"rank {config.rank}; {config.default_solver} {config.default_steps} steps = {nfe_per_generation} NFEs")
    print(f"{'batch':>6} {'candidate-NFE/s':>16} {'ms/batch':>9}")
    engine = backend()
    for size in BATCH_SIZES:
        run(engine, size)
        nfes, batches, started = 0, 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < MIN_SECONDS:
            nfes += run(engine, size)
            batches += 1
        print(f"{size:>6} {nfes / elapsed:>16,.0f} {1000 * elapsed / batches:>9.2f}")

    engine = backend()
    started = time.perf_counter()
    total_nfe = 0
    for offset in range(0, SEARCH_CANDIDATES, 64):
        total_nfe += run(engine, min(64, SEARCH_CANDIDATES - offset), ("gmm-classifier",))
    elapsed = time.perf_counter() - started
    print(f"random search: {SEARCH_CANDIDATES} candidates, {total_nfe} NFEs, scored by gmm-classifier, "
          f"in batches of 64: {elapsed:.3f} s of server time")


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

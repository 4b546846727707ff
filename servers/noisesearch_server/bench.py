"""Throughput of the Gaussian-mixture backend through the engine, and the server cost of a small search.

    python -m noisesearch_server.bench
"""

from __future__ import annotations

import itertools
import time

from .backend import EvaluateRequest
from .diffusion_backend import DiffusionBackend
from .gmm import GaussianMixture, GmmConfig, gmm_verifiers
from .lineage import Candidate, Condition, Lineage, NoiseRecipe, Solve, solve_nfe

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


def main() -> None:
    config = GmmConfig()
    model = GaussianMixture(config)
    seeds = itertools.count()

    def backend() -> DiffusionBackend:
        return DiffusionBackend(model, gmm_verifiers(model), max_batch=64, max_concurrency=1, cache_entries=0)

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


if __name__ == "__main__":
    main()

"""What serving the denoiser through Triton costs per NFE, side by side with the native engine in one run: the
embedded Gaussian mixture computed in-process, and the same mixture computed by a real Triton on
deploy/triton/gmm, at engine batches of 1, 16 and 64, with Triton's own queue and compute times from its
statistics. The mixture's network is cheap, so the difference is the path itself (encode, gRPC, Triton's
scheduler, the Python-backend stub's shared memory, decode).

    python -m noisesearch_server.triton.bench [--repository deploy/triton/gmm] [--seconds 2]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from ..backend import EvaluateRequest
from ..bench import full_generation
from ..diffusion_backend import DiffusionBackend
from ..gmm import GaussianMixture, GmmConfig
from ..lineage import solve_nfe
from .client import TritonClient
from .launch import start_triton
from .remote import TritonDenoiser

BATCH_SIZES = (1, 16, 64)
ROOT = Path(__file__).resolve().parents[3]
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def per_nfe_seconds(backend: DiffusionBackend, config: GmmConfig, size: int, seconds: float, seeds) -> float:
    """Wall seconds per candidate-NFE of full generations through the engine, `size` candidates per batch."""

    def run() -> int:
        candidates = tuple(full_generation(next(seeds), config) for _ in range(size))
        backend.evaluate([EvaluateRequest("gmm", candidates, ())])
        return sum(solve_nfe(c.lineage.ops[0]) for c in candidates)

    run()
    nfes, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        nfes += run()
    return (time.perf_counter() - started) / nfes


def stage_totals(client: TritonClient, model: str) -> tuple[int, dict[str, int]]:
    """(executions, nanoseconds spent per stage) so far, from Triton's statistics."""
    stats = client.statistics(model).model_stats[0]
    inference = stats.inference_stats
    return stats.execution_count, {stage: getattr(inference, stage).ns for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m noisesearch_server.triton.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=str(ROOT / "deploy" / "triton" / "gmm"))
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per batch size and path")
    args = parser.parse_args()

    config = GmmConfig()
    model = GaussianMixture(config)
    triton = start_triton(args.repository)
    client = TritonClient(triton.grpc_address, timeout_s=60.0, max_message_bytes=64 << 20)
    try:
        remote = TritonDenoiser(client, "gmm", "gmm_denoiser")
        native_backend = DiffusionBackend(model, [], max_batch=64, max_concurrency=1, cache_bytes=0)
        triton_backend = DiffusionBackend(remote, [], max_batch=64, max_concurrency=1, cache_bytes=0)
        seeds = itertools.count()
        print(f"gmm ({config.default_solver} {config.default_steps} steps) through the engine, in-process vs Triton "
              f"{triton.grpc_address}; {args.seconds:g} s per cell")
        print("| batch | native µs/NFE | Triton µs/NFE | overhead µs/NFE | overhead µs/call | Triton queue µs/call "
              "| Triton compute µs/call (input + infer + output) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for size in BATCH_SIZES:
            native = per_nfe_seconds(native_backend, config, size, args.seconds, seeds)
            executions_before, before = stage_totals(client, "gmm_denoiser")
            through_triton = per_nfe_seconds(triton_backend, config, size, args.seconds, seeds)
            executions_after, after = stage_totals(client, "gmm_denoiser")
            calls = executions_after - executions_before
            spent = {stage: (after[stage] - before[stage]) / calls / 1e3 for stage in STAGES}
            compute = spent["compute_input"] + spent["compute_infer"] + spent["compute_output"]
            overhead = through_triton - native
            print(
                f"| {size} | {native * 1e6:.1f} | {through_triton * 1e6:.1f} | {overhead * 1e6:.1f} | "
                f"{overhead * size * 1e6:.0f} | {spent['queue']:.0f} | {compute:.0f} "
                f"({spent['compute_input']:.0f} + {spent['compute_infer']:.0f} + {spent['compute_output']:.0f}) |"
            )
    finally:
        client.close()
        triton.stop()


if __name__ == "__main__":
    main()

"""The simulated GPU server (--model sim): real servers on port 0, real gRPC clients. Its answers must be the
gmm's, bit for bit; its pace is checked as lower bounds only (a busy machine only makes it slower)."""

import asyncio
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from noisesearch_server.proto import load
from noisesearch_server.server import parse_args, start_server

SERVERS_DIR = Path(__file__).resolve().parent.parent
DEADLINE = 30


def solve(pb, sigma_from=40.0, sigma_to=0.0, solver="heun", steps=10, seed=0):
    return pb.Op(solve=pb.Solve(sigma_from=sigma_from, sigma_to=sigma_to, solver=solver, steps=steps, seed=seed))


def mixed_candidates(pb, first_seed: int = 1) -> list:
    """Candidates of every shape a search sends: a full solve, a perturbed noise, a path (solve, renoise,
    solve), an ancestral solve, and one the server refuses alone (a bad class)."""
    seed = first_seed
    return [
        pb.Candidate(id=f"full-{seed}", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed), ops=[solve(pb)]),
                     condition=pb.Condition(class_label=2)),
        pb.Candidate(
            id=f"perturbed-{seed}",
            lineage=pb.Lineage(
                noise=pb.NoiseRecipe(seed=seed, perturbations=[pb.Perturbation(seed=seed + 7, cosine=0.9)]),
                ops=[solve(pb, solver="euler", steps=12)],
            ),
            condition=pb.Condition(class_label=5, guidance_scale=2.0),
        ),
        pb.Candidate(
            id=f"path-{seed}",
            lineage=pb.Lineage(
                noise=pb.NoiseRecipe(seed=seed + 1),
                ops=[
                    solve(pb, sigma_to=1.0, steps=6),
                    pb.Op(renoise=pb.Renoise(sigma_from=1.0, sigma_to=2.5, seed=seed + 1000)),
                    solve(pb, sigma_from=2.5, steps=4),
                ],
            ),
            condition=pb.Condition(class_label=7),
        ),
        pb.Candidate(
            id=f"ancestral-{seed}",
            lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed + 2), ops=[solve(pb, solver="euler_ancestral", steps=8, seed=3)]),
            condition=pb.Condition(class_label=0),
        ),
        pb.Candidate(id=f"bad-{seed}", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed), ops=[solve(pb)]),
                     condition=pb.Condition(class_label=99)),
    ]


def evaluate_request(pb, candidates) -> object:
    return pb.EvaluateRequest(
        model="gmm", candidates=candidates, verifiers=["gmm-oracle", "gmm-classifier", "gmm-selfsup"],
        return_samples=True,
    )


def comparable(response) -> tuple:
    """What a search reads from an answer: everything but measured seconds and the server's identity."""
    timings = sorted((t.verifier, t.calls) for t in response.verifier_timings)
    return list(response.results), response.cache_hits, timings


async def serving(*flags: str):
    return await start_server(parse_args(["--port", "0", *flags]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scraped(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as reply:
        text = reply.read().decode()
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == sample]
    assert len(found) == 1, (sample, found)
    return found[0]


def one_step(pb, seed: int) -> object:
    """A candidate that costs the gmm microseconds: one Euler step from sigma_max to 0."""
    return pb.Candidate(
        id=f"s{seed}", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed), ops=[solve(pb, solver="euler", steps=1)]),
        condition=pb.Condition(class_label=1),
    )


async def test_answers_are_the_gmms_bit_for_bit(pb):
    services = load()[1]
    gmm = await serving("--model", "gmm")
    sim = await serving("--model", "sim", "--sim-batch-ms", "20", "--sim-item-ms", "1")
    try:
        answers = {}
        for name, running in (("gmm", gmm), ("sim", sim)):
            async with grpc.aio.insecure_channel(running.address) as channel:
                denoiser = services.DenoiserStub(channel)
                description = await denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE)
                description.ClearField("server_id")
                first = await denoiser.Evaluate(evaluate_request(pb, mixed_candidates(pb)), timeout=DEADLINE)
                # The same candidates again (cache hits), and with others, merged differently.
                again = await denoiser.Evaluate(
                    evaluate_request(pb, mixed_candidates(pb, 40) + mixed_candidates(pb)), timeout=DEADLINE
                )
                answers[name] = (description, comparable(first), comparable(again))
    finally:
        await asyncio.gather(gmm.stop(grace=0.5), sim.stop(grace=0.5))

    assert answers["sim"] == answers["gmm"]
    description, (results, _, _), (_, cache_hits, _) = answers["sim"]
    assert description.model == "gmm" and description.max_batch == 128
    assert [r.HasField("error") for r in results] == [False] * 4 + [True]
    assert all(r.scores and r.state_key for r in results[:4])
    assert cache_hits == 4


async def test_an_engine_run_takes_at_least_its_modelled_time(pb):
    batch_ms, item_ms, candidates = 150.0, 10.0, 5
    sim = await serving("--model", "sim", "--sim-batch-ms", str(batch_ms), "--sim-item-ms", str(item_ms))
    try:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            started = time.monotonic()
            answer = await denoiser.Evaluate(evaluate_request(pb, mixed_candidates(pb)), timeout=DEADLINE)
            elapsed = time.monotonic() - started
    finally:
        await sim.stop(grace=0.5)
    assert len(answer.results) == candidates
    # 150 ms + 5 x 10 ms: every candidate of the run counts, the refused one too (a padded GPU batch would).
    assert elapsed >= 0.200


async def test_concurrent_requests_share_one_modelled_batch(pb):
    """Two requests of 1 and 3 candidates, merged by the batcher, are one engine run of 4 candidates: one
    modelled batch of 500 ms + 4 x 20 ms, charged to them 1 : 3 as denoising time, and counted as busy time."""
    metrics_port = free_port()
    sim = await serving(
        "--model", "sim", "--sim-batch-ms", "500", "--sim-item-ms", "20", "--max-batch", "4",
        # The first request waits up to a second for the second; the batch runs as soon as it is full.
        "--batch-window-ms", "1000", "--metrics-port", str(metrics_port),
    )
    try:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            busy_before = await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_busy_seconds_total")
            runs_before = sim.batcher.engine_runs
            started = time.monotonic()
            small, large = await asyncio.gather(
                denoiser.Evaluate(pb.EvaluateRequest(model="gmm", candidates=[one_step(pb, 1)]), timeout=DEADLINE),
                denoiser.Evaluate(
                    pb.EvaluateRequest(model="gmm", candidates=[one_step(pb, seed) for seed in (2, 3, 4)]),
                    timeout=DEADLINE,
                ),
            )
            elapsed = time.monotonic() - started
            busy = await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_busy_seconds_total") - busy_before
            batches = await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_batch_candidates_count")
            candidates = await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_batch_candidates_sum")
    finally:
        await sim.stop(grace=0.5)

    assert sim.batcher.engine_runs - runs_before == 1
    assert (batches, candidates) == (1, 4)
    assert [r.nfe_executed for r in [*small.results, *large.results]] == [1] * 4
    modelled = 0.5 + 4 * 0.020
    assert elapsed >= modelled
    # Busy time is the engine's own, within what the client waited: one modelled batch at least.
    assert modelled <= busy <= elapsed
    # Each request is charged by its candidates: the same NFEs each, so the gmm's share and the sleep's agree.
    assert large.denoise_seconds == pytest.approx(3 * small.denoise_seconds, rel=1e-9)
    # The sleep is the modelled time less the microseconds the gmm computed.
    assert small.denoise_seconds + large.denoise_seconds >= modelled / 2


async def test_busy_seconds_add_up_the_engine_runs(pb):
    """One request after another: each is an engine run of its own, and busy time grows by each one's
    modelled time at least, while the idle time between calls is not counted."""
    metrics_port = free_port()
    sim = await serving("--model", "sim", "--sim-batch-ms", "100", "--sim-item-ms", "10", "--metrics-port", str(metrics_port))
    try:
        async with grpc.aio.insecure_channel(sim.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            assert await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_busy_seconds_total") == 0
            started = time.monotonic()
            for size in (1, 2, 5):
                request = pb.EvaluateRequest(model="gmm", candidates=[one_step(pb, seed) for seed in range(size)])
                await denoiser.Evaluate(request, timeout=DEADLINE)
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - started
            busy = await asyncio.to_thread(scraped, metrics_port, "noisesearch_server_busy_seconds_total")
    finally:
        await sim.stop(grace=0.5)
    modelled = math.fsum(0.1 + 0.01 * size for size in (1, 2, 5))
    assert busy >= modelled
    # The three idle pauses of 200 ms are not busy time.
    assert busy <= elapsed - 3 * 0.2


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--model", "sim", "--sim-batch-ms", "ten"], "--sim-batch-ms: got 'ten'; want milliseconds, a number of 0 or more"),
        (["--model", "sim", "--sim-item-ms", "-1"], "--sim-item-ms: got '-1'; want milliseconds, a number of 0 or more"),
        (["--model", "sim", "--sim-item-ms", "inf"], "--sim-item-ms: got 'inf'; want milliseconds"),
        (["--sim-batch-ms", "10"], "--sim-batch-ms: only the simulated server takes it; add --model sim"),
        (["--model", "gmm", "--sim-item-ms", "1"], "--sim-item-ms: only the simulated server takes it; add --model sim"),
    ],
)
def test_bad_sim_flags_are_refused_in_one_line(flags, fragment):
    result = subprocess.run(
        [sys.executable, "-m", "noisesearch_server", "--port", "0", *flags], cwd=SERVERS_DIR,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert result.stdout == ""


def test_the_help_says_it_is_for_benchmarks_only():
    result = subprocess.run(
        [sys.executable, "-m", "noisesearch_server", "--help"], cwd=SERVERS_DIR, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "sim (the gmm at a simulated GPU's pace, for benchmarks and scale tests only" in text
    for flag in ("--sim-batch-ms MS with --model sim (benchmarks and scale tests only)",
                 "--sim-item-ms MS with --model sim (benchmarks and scale tests only)"):
        assert flag in text

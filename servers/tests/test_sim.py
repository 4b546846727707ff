"""The simulated GPU server (--model sim): real servers on port 0, real gRPC clients. Its answers must be the
gmm's, bit for bit; its pace is checked as lower bounds only (a busy machine only makes it slower)."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

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
    assert description.model == "gmm" and description.max_batch == 64
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

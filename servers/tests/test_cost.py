"""Denoise seconds: each request's share of the denoising time of the merged engine run it joined."""

import time

import grpc
import pytest

from noisesearch_server.backend import EvaluateRequest
from noisesearch_server.lineage import Cancellation
from noisesearch_server.proto import load
from noisesearch_server.server import ServerConfig, start_server

from conftest import candidate, full_solve, make_backend

# Long enough per denoiser call that the denoiser's own time dominates the engine's bookkeeping around it.
SLEEP_PER_CALL = 0.004


class TimedModel:
    """The mixture, slowed by a fixed sleep per call and timing its own calls: an independent measure of the
    time spent denoising, to compare the engine's with."""

    def __init__(self, model):
        self.model = model
        self.spec = model.spec
        self.seconds = 0.0

    def denoise(self, x, sigma, rows):
        started = time.perf_counter()
        time.sleep(SLEEP_PER_CALL)
        result = self.model.denoise(x, sigma, rows)
        self.seconds += time.perf_counter() - started
        return result


def request(candidates, verifiers=("gmm-oracle", "gmm-classifier")):
    return EvaluateRequest("gmm", tuple(candidates), verifiers, False, Cancellation())


def test_shares_of_a_merged_run_sum_to_its_denoising_time_and_follow_executed_nfes(model):
    timed = TimedModel(model)
    backend = make_backend(timed, cache_bytes=0)
    requests = [
        request([candidate(1)]),
        request([candidate(2), candidate(3), candidate(4)]),
        request([candidate(5, ops=(full_solve("euler", 10),))]),
    ]
    started = time.perf_counter()
    responses = backend.evaluate(requests)
    wall = time.perf_counter() - started
    shares = [r.denoise_seconds for r in responses]
    total = sum(shares)
    # The run's denoising time holds every denoiser call (timed by the model itself) and never exceeds the run.
    assert timed.seconds <= total <= wall
    executed = [sum(res.nfe_executed for res in r.results) for r in responses]
    # Heun 10 steps: 19 NFEs a candidate; Euler 10 steps: 10 (counted by hand).
    assert executed == [19, 57, 10]
    for share, nfes in zip(shares, executed):
        assert share == pytest.approx(total * nfes / sum(executed), rel=1e-12)


def test_a_cache_hit_costs_about_nothing(model):
    timed = TimedModel(model)
    backend = make_backend(timed)
    fresh = backend.evaluate([request([candidate(7)])])[0]
    assert fresh.denoise_seconds >= 19 * SLEEP_PER_CALL
    # Merged with a request that denoises, the one served from the cache is charged nothing.
    hit, computed = backend.evaluate([request([candidate(7)]), request([candidate(8)])])
    assert hit.cache_hits == 1 and sum(r.nfe_executed for r in hit.results) == 0
    assert hit.denoise_seconds == 0.0
    assert computed.denoise_seconds >= 19 * SLEEP_PER_CALL
    # Alone, a run of cache hits is charged its small cost of resuming: no denoiser call at all.
    calls_before = timed.seconds
    alone = backend.evaluate([request([candidate(7)])])[0]
    assert timed.seconds == calls_before
    assert 0.0 <= alone.denoise_seconds < SLEEP_PER_CALL


def test_a_request_that_fails_as_a_whole_takes_no_share(model):
    backend = make_backend(TimedModel(model), cache_bytes=0)
    bad = EvaluateRequest("gmm", (candidate(1),), ("no-such-verifier",), False, Cancellation())
    failed, served = backend.evaluate([bad, request([candidate(2)])])
    assert isinstance(failed, Exception)
    assert served.denoise_seconds >= 19 * SLEEP_PER_CALL


async def test_denoise_seconds_travel_on_the_wire():
    pb, services = load()
    running = await start_server(ServerConfig(port=0, cache_mb=1.0))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = services.DenoiserStub(channel)
            solve = pb.Op(solve=pb.Solve(sigma_from=40.0, sigma_to=0.0, solver="heun", steps=10))
            evaluate = pb.EvaluateRequest(
                candidates=[
                    pb.Candidate(
                        id=f"c{s}",
                        lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=s), ops=[solve]),
                        condition=pb.Condition(class_label=2),
                    )
                    for s in range(8)
                ],
                verifiers=["gmm-oracle"],
            )
            response = await denoiser.Evaluate(evaluate, timeout=10)
    finally:
        await running.stop(grace=0.5)
    assert all(result.error.code == "" for result in response.results)
    assert 0 < response.denoise_seconds <= response.server_seconds

"""Through a real grpc.aio server bound to port 0 and a real client channel."""

import asyncio
import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from noisesearch_server import codec
from noisesearch_server.backend import CandidateResult, EvaluateResponse
from noisesearch_server.gmm import gmm_verifiers
from noisesearch_server.proto import load
from noisesearch_server.server import ServerConfig, start_server

from conftest import CountingModel, make_backend

DEADLINE = 10


def solve(pb, sigma_from=40.0, sigma_to=0.0, solver="heun", steps=10):
    return pb.Op(solve=pb.Solve(sigma_from=sigma_from, sigma_to=sigma_to, solver=solver, steps=steps))


def grpc_candidate(pb, seed, label=2, ops=None, **fields):
    return pb.Candidate(
        id=f"c{seed}",
        lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed), ops=ops if ops is not None else [solve(pb)]),
        condition=pb.Condition(class_label=label),
        **fields,
    )


async def expect_status(call, code, *fragments):
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == code, failure.value.details()
    for fragment in fragments:
        assert fragment in failure.value.details()
    return failure.value.details()


async def test_describe_reports_the_model(pb, denoiser, verifier):
    description = await denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE)
    assert description.model == "gmm" and list(description.latent_shape) == [16]
    assert (description.sigma_min, description.sigma_max) == (0.02, 40.0)
    assert (description.default_solver, description.default_steps, description.num_classes) == ("heun", 28, 10)
    assert description.rho == 7.0
    assert [s.name for s in description.solvers] == ["euler", "heun", "euler_ancestral"]
    assert description.max_batch == 128 and description.max_concurrency == 8
    assert len(description.server_id) == 36
    verifiers = {v.name: v for v in description.verifiers}
    assert verifiers["gmm-selfsup"].xpred_sigma == 0.4 and not verifiers["gmm-selfsup"].needs_condition
    assert verifiers["gmm-oracle"].kind == "oracle" and verifiers["gmm-classifier"].kind == "supervised"
    sample_description = await verifier.Describe(pb.DescribeVerifiersRequest(), timeout=DEADLINE)
    assert list(sample_description.sample_shape) == [16] and len(sample_description.verifiers) == 3


async def test_evaluate_scores_each_candidate_in_order(pb, denoiser):
    request = pb.EvaluateRequest(
        model="gmm",
        candidates=[grpc_candidate(pb, s) for s in (5, 1, 9)],
        verifiers=["gmm-oracle", "gmm-classifier", "gmm-selfsup"],
        return_samples=True,
    )
    response = await denoiser.Evaluate(request, timeout=DEADLINE)
    assert [r.id for r in response.results] == ["c5", "c1", "c9"]
    for result in response.results:
        assert not result.HasField("error")
        assert set(result.scores) == {"gmm-oracle", "gmm-classifier", "gmm-selfsup"}
        assert (result.nfe_logical, result.nfe_executed, len(result.sample), result.final_sigma) == (19, 19, 16, 0.0)
    assert {t.verifier: t.calls for t in response.verifier_timings}["gmm-oracle"] == 3
    again = await denoiser.Evaluate(request, timeout=DEADLINE)
    assert again.cache_hits == 3 and all(r.nfe_executed == 0 for r in again.results)
    assert again.server_id == response.server_id and again.server_seconds > 0


@pytest.mark.parametrize(
    ("request_fields", "code", "fragment"),
    [
        ({"model": "sdxl"}, grpc.StatusCode.NOT_FOUND, 'model: unknown model \'sdxl\''),
        ({"candidates": []}, grpc.StatusCode.INVALID_ARGUMENT, "candidates: empty"),
        ({"count": 129}, grpc.StatusCode.INVALID_ARGUMENT, "more than max_batch 128"),
        (
            {"verifiers": ["gmm-oracle", "foo"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "verifiers[1]: unknown verifier 'foo'; this server hosts gmm-oracle, gmm-classifier, gmm-selfsup",
        ),
    ],
)
async def test_bad_requests_fail_as_a_whole(pb, denoiser, request_fields, code, fragment):
    count = request_fields.get("count", 2)
    fields = {"model": "gmm", "candidates": [grpc_candidate(pb, s) for s in range(count)]}
    fields.update((k, v) for k, v in request_fields.items() if k != "count")
    await expect_status(denoiser.Evaluate(pb.EvaluateRequest(**fields), timeout=DEADLINE), code, fragment)


async def test_bad_candidates_fail_alone_through_grpc(pb, denoiser):
    no_noise = pb.Candidate(id="bare", lineage=pb.Lineage(ops=[solve(pb)]), condition=pb.Condition(class_label=1))
    empty_op = grpc_candidate(pb, 3, ops=[solve(pb, sigma_to=1.0), pb.Op()])
    bad_sigma = grpc_candidate(pb, 4, ops=[solve(pb, sigma_to=1.0), solve(pb, sigma_from=1.0, sigma_to=math.nan)])
    prompt = pb.Candidate(id="p", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=1)), condition=pb.Condition(prompt="a"))
    request = pb.EvaluateRequest(
        candidates=[grpc_candidate(pb, 1), no_noise, empty_op, bad_sigma, prompt, grpc_candidate(pb, 2)],
        verifiers=["gmm-classifier"],
    )
    results = (await denoiser.Evaluate(request, timeout=DEADLINE)).results
    assert [r.error.message.split(":")[0] for r in results[1:5]] == [
        "candidates[1].lineage.noise",
        "candidates[2].lineage.ops[1]",
        "candidates[3].lineage.ops[1].solve.sigma_to",
        "candidates[4].condition.prompt",
    ]
    assert all(r.error.code == "INVALID_ARGUMENT" and not r.scores for r in results[1:5])
    assert "gmm-classifier" in results[0].scores and "gmm-classifier" in results[5].scores


async def test_score_rates_shipped_samples(pb, denoiser, verifier):
    evaluated = await denoiser.Evaluate(
        pb.EvaluateRequest(candidates=[grpc_candidate(pb, 8)], verifiers=["gmm-oracle"], return_samples=True),
        timeout=DEADLINE,
    )
    sample = pb.Sample(values=evaluated.results[0].sample, shape=[16], condition=pb.Condition(class_label=2))
    scored = await verifier.Score(pb.ScoreRequest(verifiers=["gmm-oracle"], samples=[sample]), timeout=DEADLINE)
    assert math.isclose(scored.results[0].scores["gmm-oracle"], evaluated.results[0].scores["gmm-oracle"], rel_tol=1e-4)
    assert scored.verifier_timings[0].calls == 1


@pytest.mark.parametrize(
    ("sample_fields", "verifiers", "fragment"),
    [
        ({"values": [0.0] * 3, "shape": [3]}, ["gmm-oracle"], "samples[1].shape: got [3], want [16]"),
        ({"values": [0.0] * 15}, ["gmm-oracle"], "samples[1].values: got 15 values, want 16"),
        ({"values": [0.0] * 15 + [math.nan]}, ["gmm-oracle"], "samples[1].values[15]: got nan"),
        ({"condition": None}, ["gmm-classifier"], "samples[1].condition: verifier 'gmm-classifier' needs"),
        ({"condition": {"class_label": 11}}, ["gmm-classifier"], "samples[1].condition.class_label: got 11"),
        ({}, ["gmm-selfsup"], "samples[1].xpred: got 0 values, want 16"),
        ({}, ["gmm-oracle", "bogus"], "verifiers[1]: unknown verifier 'bogus'"),
    ],
)
async def test_bad_score_requests_name_the_field(pb, verifier, sample_fields, verifiers, fragment):
    good = pb.Sample(values=[0.1] * 16, shape=[16], condition=pb.Condition(class_label=1), xpred=[0.1] * 16)
    fields = {"values": [0.2] * 16, "shape": [16], "condition": {"class_label": 1}, **sample_fields}
    if fields["condition"] is None:
        del fields["condition"]
    bad = pb.Sample(**fields)
    call = verifier.Score(pb.ScoreRequest(verifiers=verifiers, samples=[good, bad]), timeout=DEADLINE)
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, fragment)


async def test_health_reports_serving_for_every_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "noisesearch.v1.Denoiser", "noisesearch.v1.Verifier"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=DEADLINE):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"noisesearch.v1.Denoiser", "noisesearch.v1.Verifier", "grpc.health.v1.Health"} <= names


async def test_concurrent_requests_are_merged_and_split_back(pb):
    running = await start_server(ServerConfig(port=0, batch_window_ms=50.0))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)

            def request(r):
                return pb.EvaluateRequest(
                    candidates=[grpc_candidate(pb, 100 * r + i, label=r) for i in range(4)],
                    verifiers=["gmm-classifier"],
                    return_samples=True,
                )

            await denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE)
            runs_before = running.batcher.engine_runs
            responses = await asyncio.gather(*(denoiser.Evaluate(request(r), timeout=DEADLINE) for r in range(8)))
            merged_runs = running.batcher.engine_runs - runs_before
            alone = [await denoiser.Evaluate(request(r), timeout=DEADLINE) for r in (0, 7)]
    finally:
        await running.stop(grace=0.5)
    assert merged_runs < 8
    for r, response in enumerate(responses):
        assert [res.id for res in response.results] == [f"c{100 * r + i}" for i in range(4)]
        assert all(res.error.code == "" for res in response.results)
    for r, single in zip((0, 7), alone):
        assert single.cache_hits == 4
        assert [list(res.sample) for res in single.results] == [list(res.sample) for res in responses[r].results]
        assert [dict(res.scores) for res in single.results] == [dict(res.scores) for res in responses[r].results]


async def test_health_answers_while_the_engine_is_busy(pb):
    running = await start_server(ServerConfig(port=0))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            big = pb.EvaluateRequest(
                candidates=[grpc_candidate(pb, s, ops=[solve(pb, steps=400)]) for s in range(64)]
            )
            evaluation = asyncio.ensure_future(denoiser.Evaluate(big, timeout=60))
            await asyncio.sleep(0.05)
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            assert not evaluation.done()
            await evaluation
    finally:
        await running.stop(grace=0.5)


async def test_stopping_sets_not_serving_first(pb):
    running = await start_server(ServerConfig(port=0))
    await running.stop(grace=0.1)
    response = await running.health.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_samples_round_trip_as_float32(pb):
    values = np.linspace(-1, 1, 16)
    response = EvaluateResponse((CandidateResult("a", sample=values),), (), 0)
    encoded = codec.encode_evaluate_response(response, server_seconds=0.1, server_id="x")
    assert np.array_equal(np.array(encoded.results[0].sample, dtype=np.float32), values.astype(np.float32))


async def test_keys_and_bases_round_trip_through_grpc(pb, denoiser):
    partway = grpc_candidate(pb, 3, ops=[solve(pb, sigma_to=1.0, steps=4)], score_xpred=True)
    first = (await denoiser.Evaluate(pb.EvaluateRequest(candidates=[partway], return_samples=True), timeout=DEADLINE)).results[0]
    assert len(first.state_key) == 16 and len(first.noise_key) == 16 and first.nfe_logical == 9
    finish = pb.Candidate(
        id="finish",
        base=first.state_key,
        lineage=pb.Lineage(ops=[pb.Op(solve=pb.Solve(sigma_from=1.0, sigma_to=0.0, solver="euler_ancestral", steps=3, seed=5))]),
        condition=pb.Condition(class_label=2),
    )
    lost = pb.Candidate(id="lost", base=bytes(16), lineage=pb.Lineage(), condition=pb.Condition(class_label=2))
    response = await denoiser.Evaluate(pb.EvaluateRequest(candidates=[finish, lost], verifiers=["gmm-oracle"]), timeout=DEADLINE)
    finished, missing = response.results
    assert not finished.HasField("error") and "gmm-oracle" in finished.scores
    # The x-prediction scored at sigma 1 is the first evaluation of the solve that continues from there.
    assert (finished.nfe_logical, finished.nfe_executed, finished.noise_key) == (3, 2, first.noise_key)
    assert missing.error.code == "NOT_FOUND" and "send the whole lineage" in missing.error.message
    assert (missing.nfe_logical, missing.nfe_executed, missing.state_key) == (0, 0, b"")


async def test_unset_guidance_is_the_default_and_zero_is_unconditional(pb, denoiser):
    def with_guidance(**guidance):
        return pb.Candidate(
            id=str(guidance), lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=4), ops=[solve(pb, steps=3)]),
            condition=pb.Condition(class_label=2, **guidance),
        )

    unconditional = pb.Candidate(id="u", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=4), ops=[solve(pb, steps=3)]))
    request = pb.EvaluateRequest(
        candidates=[with_guidance(), with_guidance(guidance_scale=1.0), with_guidance(guidance_scale=0.0), unconditional],
        return_samples=True,
    )
    unset, one, zero, none = (await denoiser.Evaluate(request, timeout=DEADLINE)).results
    assert list(unset.sample) == list(one.sample) and unset.state_key == one.state_key
    assert list(zero.sample) == list(none.sample) and list(zero.sample) != list(one.sample)


async def test_a_request_over_the_nfe_limit_is_refused(pb, denoiser):
    # 64 candidates x (2 x 10,000 - 1) Heun NFEs = 1,279,936 > 1,000,000.
    heavy = pb.EvaluateRequest(candidates=[grpc_candidate(pb, s, ops=[solve(pb, steps=10_000)]) for s in range(64)])
    await expect_status(
        denoiser.Evaluate(heavy, timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT,
        "candidates: the request costs up to 1279936 logical NFEs, more than this server's limit 1000000",
    )


async def test_score_refuses_more_than_its_sample_limit(pb, verifier):
    sample = pb.Sample(values=[0.1] * 16, shape=[16], condition=pb.Condition(class_label=1))
    await expect_status(
        verifier.Score(pb.ScoreRequest(verifiers=["gmm-oracle"], samples=[sample] * 10_001), timeout=DEADLINE),
        grpc.StatusCode.INVALID_ARGUMENT, "samples: got 10001, more than 10000",
    )


class PoisonedOracle:
    """The oracle, except that any batch holding a class-7 sample raises."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.spec = oracle.spec

    def score(self, samples, rows, probes):
        if np.any(rows.labels == 7):
            raise ValueError("class 7 poisons the batch")
        return self.oracle.score(samples, rows, probes)


async def merged_pair(pb, running, first, second):
    """Sends two requests at once; returns their responses (or errors) and the engine runs they took."""
    async with grpc.aio.insecure_channel(running.address) as channel:
        denoiser = load()[1].DenoiserStub(channel)
        await denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE)
        runs_before = running.batcher.engine_runs
        outcomes = await asyncio.gather(
            denoiser.Evaluate(first, timeout=DEADLINE), denoiser.Evaluate(second, timeout=DEADLINE), return_exceptions=True
        )
    return outcomes, running.batcher.engine_runs - runs_before


async def test_a_failing_verifier_fails_only_the_candidate_it_fails_on(pb, model):
    backend = make_backend(model)
    backend.engine.verifiers["gmm-oracle"] = PoisonedOracle(backend.engine.verifiers["gmm-oracle"])
    running = await start_server(ServerConfig(port=0, batch_window_ms=300.0), backend)
    try:
        healthy = pb.EvaluateRequest(candidates=[grpc_candidate(pb, s, label=s) for s in (1, 2)], verifiers=["gmm-oracle"])
        poisoned = pb.EvaluateRequest(candidates=[grpc_candidate(pb, s, label=s) for s in (3, 7)], verifiers=["gmm-oracle"])
        (ok, mixed), runs = await merged_pair(pb, running, healthy, poisoned)
    finally:
        await running.stop(grace=0.5)
    assert runs == 1
    assert all("gmm-oracle" in r.scores for r in ok.results)
    assert "gmm-oracle" in mixed.results[0].scores
    assert mixed.results[1].error.code == "INTERNAL"
    assert mixed.results[1].error.message == (
        "candidates[1]: verifier 'gmm-oracle' failed: ValueError: class 7 poisons the batch"
    )


async def test_a_request_that_crashes_the_backend_fails_alone_as_internal(pb, model):
    class CrashingBackend(type(make_backend(model))):
        def evaluate(self, requests):
            if any(c.id == "poison" for request in requests for c in request.candidates):
                raise RuntimeError("the backend broke")
            return super().evaluate(requests)

    backend = CrashingBackend(model, gmm_verifiers(model), max_batch=64, max_concurrency=8, cache_bytes=1 << 20)
    running = await start_server(ServerConfig(port=0, batch_window_ms=300.0), backend)
    try:
        healthy = pb.EvaluateRequest(candidates=[grpc_candidate(pb, 1)], verifiers=["gmm-oracle"])
        poisoned = pb.EvaluateRequest(candidates=[pb.Candidate(id="poison", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=2)))])
        (ok, failure), runs = await merged_pair(pb, running, healthy, poisoned)
    finally:
        await running.stop(grace=0.5)
    # One merged run that raised, then each request alone.
    assert runs == 3
    assert "gmm-oracle" in ok.results[0].scores
    assert failure.code() == grpc.StatusCode.INTERNAL
    assert failure.details() == "evaluation failed: RuntimeError: the backend broke"


async def test_an_unexpected_error_reaches_the_client_as_internal_with_its_cause(pb, model):
    backend = make_backend(model)
    backend.verifiers["gmm-oracle"] = PoisonedOracle(backend.verifiers["gmm-oracle"])
    running = await start_server(ServerConfig(port=0), backend)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            verifier = load()[1].VerifierStub(channel)
            sample = pb.Sample(values=[0.1] * 16, shape=[16], condition=pb.Condition(class_label=7))
            details = await expect_status(
                verifier.Score(pb.ScoreRequest(verifiers=["gmm-oracle"], samples=[sample]), timeout=DEADLINE),
                grpc.StatusCode.INTERNAL,
            )
    finally:
        await running.stop(grace=0.5)
    assert details == "the server failed: ValueError: class 7 poisons the batch"


def long_request(pb, candidates, steps):
    return pb.EvaluateRequest(candidates=[grpc_candidate(pb, s, ops=[solve(pb, steps=steps)]) for s in range(candidates)])


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_run(pb, model):
    counting = CountingModel(model)
    running = await start_server(ServerConfig(port=0, batch_window_ms=0.0), make_backend(counting, cache_bytes=0))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            long = asyncio.ensure_future(denoiser.Evaluate(long_request(pb, 16, 2000), timeout=60))
            await asyncio.sleep(0.1)
            await expect_status(
                denoiser.Evaluate(pb.EvaluateRequest(candidates=[grpc_candidate(pb, 99)]), timeout=0.2),
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert not long.done(), "the long request must still be running for this test to mean anything"
            await long
            # Queued after the expired request, so the batcher has passed it by when this one answers.
            small = await denoiser.Evaluate(pb.EvaluateRequest(candidates=[grpc_candidate(pb, 5, ops=[solve(pb, steps=2)])]), timeout=DEADLINE)
    finally:
        await running.stop(grace=0.5)
    assert small.results[0].nfe_executed == 3
    assert counting.rows == 16 * 3999 + 3 and running.batcher.skipped_requests == 1


async def test_a_cancelled_request_stops_and_frees_the_engine(pb, model):
    counting = CountingModel(model)
    running = await start_server(ServerConfig(port=0, batch_window_ms=0.0), make_backend(counting, cache_bytes=0))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            # 32 x 19,999 NFEs: many seconds of work.
            huge = denoiser.Evaluate(long_request(pb, 32, 10_000), timeout=120)
            await asyncio.sleep(0.3)
            huge.cancel()
            started = asyncio.get_running_loop().time()
            small = await denoiser.Evaluate(pb.EvaluateRequest(candidates=[grpc_candidate(pb, 5, ops=[solve(pb, steps=2)])]), timeout=DEADLINE)
            answered_in = asyncio.get_running_loop().time() - started
    finally:
        await running.stop(grace=0.5)
    assert small.results[0].error.code == "" and answered_in < 2.0
    assert counting.rows < 32 * 19_999 / 10

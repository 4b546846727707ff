"""The noisesearch server's Triton backend (--triton) against a real tritonserver serving deploy/triton/gmm, and
copies of it with test-only models: every answer is checked against an in-process native gmm server, which
computes the same networks without Triton; every way Triton can be missing, slow, broken or gone is checked
for the one-line start error or the status the contract promises (docs/triton.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from triton_fixtures import (
    DEADLINE_S,
    GMM_VERIFIERS,
    REPOSITORY,
    add_model,
    copy_repository,
    health_status,
    replace_once,
    serving,
    skip_without_triton,
    triton_argv,
    wait_for,
)

skip_without_triton()

import tritonclient.grpc as triton_grpc  # noqa: E402

from noisesearch_server.backend import ConfigError  # noqa: E402
from noisesearch_server.server import build_backend, parse_args  # noqa: E402
from noisesearch_server.triton.launch import TritonServer, free_ports, start_triton, wait_ready  # noqa: E402

SERVERS_DIR = Path(__file__).resolve().parents[1]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALL_VERIFIERS = list(GMM_VERIFIERS)


def stopped_at_teardown(server: TritonServer):
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """The committed repository, as deployed."""
    yield from stopped_at_teardown(start_triton(REPOSITORY, log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log"))


# Test-only models, each a few lines over the committed pb_gmm classes (imported through .venv-triton's .pth).
ORACLE_THAT_CANNOT_LOAD = '''from noisesearch_server.triton.pb_gmm import GmmOracle


class TritonPythonModel(GmmOracle):
    def initialize(self, args):
        raise RuntimeError("test oracle: weights file is missing")
'''

DENOISER_REFUSING_CLASS_7 = '''from noisesearch_server.triton import contract, pb_common
from noisesearch_server.triton.pb_gmm import GmmDenoiser


class TritonPythonModel(GmmDenoiser):
    def _denoise(self, request):
        if (pb_common.tensor(request, contract.CLASS_LABEL) == 7).any():
            raise ValueError("test denoiser: class 7 is refused")
        return super()._denoise(request)
'''

# Models that trust their config.pbtxt, as a third-party one (ONNX, TensorRT) may: they load whatever their
# tensors and parameters say, so only the noisesearch server's own checks stand between a mis-shaped or
# under-described model and wrong answers. (pb_gmm's own models refuse to load such a config: checked below.)
DENOISER_TRUSTING_ITS_CONFIG = '''from noisesearch_server.gmm import GaussianMixture, GmmConfig
from noisesearch_server.triton.pb_gmm import GmmDenoiser


class TritonPythonModel(GmmDenoiser):
    def initialize(self, args):
        self.model = GaussianMixture(GmmConfig())
'''

CLASSIFIER_TRUSTING_ITS_CONFIG = '''from noisesearch_server.gmm import ClassifierVerifier, GaussianMixture, GmmConfig
from noisesearch_server.triton.pb_gmm import GmmClassifier


class TritonPythonModel(GmmClassifier):
    def initialize(self, args):
        self.verifier = ClassifierVerifier(GaussianMixture(GmmConfig()))
'''


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """One tritonserver for every broken model (one start instead of five on a 2-core machine): the committed
    repository with gmm_oracle failing to load, plus a denoiser failing on class 7 and three whose metadata or
    parameters break the contract. Triton keeps serving the rest, as a fleet's would."""
    root = tmp_path_factory.mktemp("faulty")
    repository = copy_repository(root / "repository")
    (repository / "gmm_oracle" / "1" / "model.py").write_text(ORACLE_THAT_CANNOT_LOAD)
    denoiser_py = (REPOSITORY / "gmm_denoiser" / "1" / "model.py").read_text()
    add_model(repository, "gmm_denoiser_refuses_7", "gmm_denoiser", DENOISER_REFUSING_CLASS_7)
    to_x8 = lambda t: replace_once(t, "dims: [ 16 ]", "dims: [ 8 ]")  # noqa: E731
    add_model(repository, "gmm_denoiser_x8", "gmm_denoiser", DENOISER_TRUSTING_ITS_CONFIG, to_x8)
    add_model(repository, "gmm_denoiser_x8_checked", "gmm_denoiser", denoiser_py, to_x8)
    add_model(
        repository, "gmm_classifier_no_score", "gmm_classifier", CLASSIFIER_TRUSTING_ITS_CONFIG,
        lambda t: replace_once(t, '{ name: "score"', '{ name: "log_posterior"'),
    )
    add_model(
        repository, "gmm_denoiser_no_sigma_max", "gmm_denoiser", DENOISER_TRUSTING_ITS_CONFIG,
        lambda t: replace_once(t, '  { key: "sigma_max" value: { string_value: "40.0" } },\n', ""),
    )
    server = start_triton(
        repository, log_path=root / "tritonserver.log", extra_args=["--exit-on-error=false", "--strict-readiness=false"],
    )
    try:
        loaded = [
            "gmm_denoiser", "gmm_classifier", "gmm_selfsup", "gmm_denoiser_refuses_7", "gmm_denoiser_x8",
            "gmm_classifier_no_score", "gmm_denoiser_no_sigma_max",
        ]
        wait_ready(server.grpc_address, loaded, timeout_s=DEADLINE_S)
    except BaseException:
        server.kill()
        raise
    yield from stopped_at_teardown(server)


# Candidates and calls, as the orchestrator sends them.

def solve(pb, sigma_from=40.0, sigma_to=0.0, solver="heun", steps=8, seed=0):
    return pb.Op(solve=pb.Solve(sigma_from=sigma_from, sigma_to=sigma_to, solver=solver, steps=steps, seed=seed))


def renoise(pb, sigma_from, sigma_to, seed):
    return pb.Op(renoise=pb.Renoise(sigma_from=sigma_from, sigma_to=sigma_to, seed=seed))


def candidate(pb, name, seed, ops, label=None, guidance=None, perturbations=(), **fields):
    condition = pb.Condition()
    if label is not None:
        condition.class_label = label
    if guidance is not None:
        condition.guidance_scale = guidance
    noise = pb.NoiseRecipe(seed=seed, perturbations=[pb.Perturbation(seed=s, cosine=c) for s, c in perturbations])
    return pb.Candidate(id=name, lineage=pb.Lineage(noise=noise, ops=ops), condition=condition, **fields)


def searches(pb):
    """One call's candidates covering what a search sends: both deterministic solvers and the ancestral one,
    guidance off, default and strong, a search-over-paths lineage (solve, renoise, solve), a perturbed noise,
    and an x-prediction scored part-way."""
    return [
        candidate(pb, "heun", 1, [solve(pb, steps=10)], label=3),
        candidate(pb, "euler-unguided", 2, [solve(pb, solver="euler", steps=12)], label=5, guidance=0.0),
        candidate(pb, "heun-guided", 3, [solve(pb)], label=2, guidance=3.0),
        candidate(pb, "ancestral", 4, [solve(pb, solver="euler_ancestral", steps=9, seed=44)], label=9, guidance=1.5),
        candidate(
            pb, "path", 5, [solve(pb, 40.0, 1.0, steps=6), renoise(pb, 1.0, 2.5, 1005), solve(pb, 2.5, 0.0, steps=4)],
            label=4, perturbations=[(55, 0.8)],
        ),
        candidate(pb, "xpred", 6, [solve(pb, 40.0, 0.1, steps=10)], label=1, score_xpred=True),
    ]


def stem(pb):
    """Search over paths' first round: solved part-way and scored on its x-prediction there, by the verifiers
    that take any sigma (gmm-selfsup takes only x-predictions below 0.4)."""
    return [candidate(pb, "stem", 7, [solve(pb, 40.0, 1.0, steps=6)], label=6, score_xpred=True)]


def children(pb, stem_key: bytes):
    """Search over paths' next round: two renoisings of the stem's state, from the key this server gave."""
    return [
        candidate(pb, f"child-{seed}", 7, [renoise(pb, 1.0, 2.5, seed), solve(pb, 2.5, 0.0, steps=4)], label=6, base=stem_key)
        for seed in (71, 72)
    ]


def evaluate(served, candidates, verifiers=ALL_VERIFIERS, return_samples=True):
    request = served.pb.EvaluateRequest(
        model="gmm", candidates=candidates, verifiers=verifiers, return_samples=return_samples,
    )
    return served.denoiser.Evaluate(request, timeout=DEADLINE_S)


def without_keys(response) -> list:
    """Each CandidateResult in full (scores, sample, NFEs, error) but its cache keys: those hash the model's identity,
    which names the numpy of the process computing the network (1.26.4 in Triton's stub), so that neither server's
    cache ever answers for the other's model; which keys a result has is kept. Timings are not in the results."""
    results = []
    for result in response.results:
        copy = type(result)()
        copy.CopyFrom(result)
        copy.state_key = b"key" if result.state_key else b""
        copy.noise_key = b"key" if result.noise_key else b""
        results.append(copy)
    return results


def assert_same_evaluation(got, expected) -> None:
    assert len(got.results) == len(expected.results)
    for mine, native in zip(without_keys(got), without_keys(expected)):
        assert mine == native, f"candidate {native.id}: through Triton\n{mine}\nnatively\n{native}"
    assert got.cache_hits == expected.cache_hits
    assert [(t.verifier, t.calls) for t in got.verifier_timings] == [(t.verifier, t.calls) for t in expected.verifier_timings]


def executions(server: TritonServer, model: str) -> int:
    """How many times Triton has executed `model`: proof that a call went through Triton."""
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        found = client.get_inference_statistics(model, as_json=True, client_timeout=DEADLINE_S)
    finally:
        client.close()
    return int(found["model_stats"][0].get("execution_count", 0))


async def expect_status(call, code) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == code, failure.value.details()
    return failure.value.details()


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"want one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


# 1. Through Triton, bit for bit what the native engine computes.

async def test_evaluate_score_and_population_equal_the_native_server(triton):
    # Bit for bit although Triton's stub runs numpy 1.26.4 and this process numpy 2.4.6: gmm.py computes each row
    # with elementwise operations and fixed-order sums that both numpys carry out alike (test_triton_gmm_repository
    # checks the networks alone; here the whole engine runs over them).
    async with serving(triton_argv(triton.grpc_address)) as remote, serving([]) as native:
        pb = native.pb
        described = [await s.denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE_S) for s in (remote, native)]
        assert described[0].server_id != described[1].server_id
        for description in described:
            description.server_id = ""
        assert described[0] == described[1]

        first = [await evaluate(s, searches(pb)) for s in (remote, native)]
        assert all(executions(triton, model) > 0 for model in ["gmm_denoiser", *GMM_VERIFIERS.values()])
        assert [r.error.message for r in first[1].results if r.HasField("error")] == []
        assert_same_evaluation(*first)

        # An unconditional row beside guided conditional ones, in one engine batch (same ops); only the verifier
        # that needs no condition can score it.
        mixed = [candidate(pb, "unconditional", 8, [solve(pb)]), candidate(pb, "conditional", 9, [solve(pb)], label=8, guidance=2.0)]
        assert_same_evaluation(*[await evaluate(s, mixed, ["gmm-selfsup"]) for s in (remote, native)])

        stems = [await evaluate(s, stem(pb), ["gmm-oracle", "gmm-classifier"]) for s in (remote, native)]
        assert_same_evaluation(*stems)
        # The next round continues the stem from each server's own key, beside two of the first call's candidates:
        # four cache hits, two resumed states and two finished ones.
        second = []
        for served, stemmed in zip((remote, native), stems):
            second.append(await evaluate(served, children(pb, stemmed.results[0].state_key) + searches(pb)[:2]))
        assert second[1].cache_hits == 4 and [r.error.message for r in second[1].results if r.HasField("error")] == []
        assert_same_evaluation(*second)

        xpred = next(r.sample for r in first[1].results if r.id == "xpred")
        samples = [
            pb.Sample(values=r.sample, shape=[16], condition=c.condition, xpred=xpred)
            for r, c in zip(first[1].results, searches(pb))
        ]
        scored = [
            await s.verifier.Score(pb.ScoreRequest(verifiers=ALL_VERIFIERS, samples=samples), timeout=DEADLINE_S)
            for s in (remote, native)
        ]
        assert [r.SerializeToString(deterministic=True) for r in scored[0].results] == [
            r.SerializeToString(deterministic=True) for r in scored[1].results
        ]
        population = [
            await s.verifier.Population(pb.PopulationRequest(samples=samples), timeout=DEADLINE_S) for s in (remote, native)
        ]
        assert population[0] == population[1] and population[1].samples == len(samples)


# 2. Triton down at start, or started after the server.

def test_triton_down_at_start_is_one_line_and_a_non_zero_exit():
    [port] = free_ports(1)
    argv = ["--port", "0", *triton_argv(f"127.0.0.1:{port}", verifiers={}), "--triton-wait", "1"]
    finished = subprocess.run(
        [sys.executable, "-m", "noisesearch_server", *argv], cwd=SERVERS_DIR, capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode != 0
    line = one_line(finished.stderr)
    assert f"127.0.0.1:{port}" in line and "not ready" in line, line


async def test_a_server_started_before_triton_waits_for_it(tmp_path):
    grpc_port, http_port, metrics_port = free_ports(3)
    config = parse_args(["--port", "0", *triton_argv(f"127.0.0.1:{grpc_port}"), "--triton-wait", "60"])
    building = asyncio.ensure_future(asyncio.to_thread(build_backend, config))
    await asyncio.sleep(2.0)
    assert not building.done(), "the start did not wait for Triton"
    server = await asyncio.to_thread(
        start_triton, REPOSITORY, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
        log_path=tmp_path / "tritonserver.log",
    )
    try:
        backend = await asyncio.wait_for(building, DEADLINE_S)
        async with serving(triton_argv(server.grpc_address), backend) as remote, serving([]) as native:
            assert await health_status(remote) == SERVING
            calls = [await evaluate(s, searches(native.pb)[:3]) for s in (remote, native)]
            assert_same_evaluation(*calls)
    finally:
        building.cancel()
        await asyncio.to_thread(server.stop)


# 3. A model that does not load; 6. models whose metadata or parameters break the contract.

def start_error(argv: list[str]) -> str:
    """The server's start from its command line, in this process: it must refuse with one line, which main prints
    before its exit status 2 (the subprocess test above checks that path). Building the backend, not serving, so
    that a start that wrongly succeeds fails the test instead of serving until a timeout."""
    with pytest.raises(ConfigError) as refused:
        build_backend(parse_args(["--port", "0", *argv]))
    return one_line(str(refused.value))


def test_a_model_that_did_not_load_fails_the_start_naming_it_and_why(faulty):
    line = start_error([*triton_argv(faulty.grpc_address), "--triton-wait", "0.5"])
    assert "model 'gmm_oracle' is not ready" in line and "test oracle: weights file is missing" in line, line
    # The models that did load are not blamed.
    assert "gmm_denoiser" not in line and "gmm_classifier" not in line, line


@pytest.mark.parametrize(
    ("model", "verifiers", "fragments"),
    [
        (
            # Without a verifier to disagree, the name does: gmm is the mixture, whose population is computed here.
            "gmm_denoiser_x8", {},
            ["triton model 'gmm_denoiser_x8' (--model gmm@triton:gmm_denoiser_x8)",
             "input 'x' has latent shape [8]; want [16]"],
        ),
        (
            "gmm_denoiser_x8", {"gmm-classifier": "gmm_classifier"},
            ["triton model 'gmm_classifier' (--verifier gmm-classifier@triton:gmm_classifier)",
             "input 'samples' is FP64 [-1, 16]; want FP64 [-1, 8]"],
        ),
        (
            "gmm_denoiser", {"gmm-classifier": "gmm_classifier_no_score"},
            ["triton model 'gmm_classifier_no_score'", "output 'score' is missing; want FP64 [-1, 1]"],
        ),
        (
            "gmm_denoiser_no_sigma_max", {},
            ["triton model 'gmm_denoiser_no_sigma_max' (--model gmm@triton:gmm_denoiser_no_sigma_max)",
             "lacks parameters sigma_max"],
        ),
    ],
    ids=["latent-8-named-gmm", "latent-8-against-a-16-verifier", "verifier-without-score", "denoiser-without-sigma_max"],
)
def test_a_model_breaking_the_contract_fails_the_start_naming_it(faulty, model, verifiers, fragments):
    line = start_error([*triton_argv(faulty.grpc_address, model, verifiers), "--triton-wait", "5"])
    for fragment in fragments:
        assert fragment in line, line


def test_the_projects_own_gmm_model_refuses_to_load_a_mis_shaped_config(faulty):
    # pb_gmm checks config.pbtxt's tensors against the mixture at load: the model is not ready, and the start
    # of a server naming it says which tensors and what they should be.
    line = start_error([*triton_argv(faulty.grpc_address, "gmm_denoiser_x8_checked", {}), "--triton-wait", "0.5"])
    assert "model 'gmm_denoiser_x8_checked' is not ready" in line, line
    assert "input x: TYPE_FP64 [8] -> TYPE_FP64 [16]; output x0: TYPE_FP64 [8] -> TYPE_FP64 [16]" in line, line


# 4. A model that raises on some rows.

async def test_rows_the_model_raises_on_fail_alone_with_tritons_message(faulty):
    verifiers = {"gmm-classifier": "gmm_classifier"}
    async with serving(triton_argv(faulty.grpc_address, "gmm_denoiser_refuses_7", verifiers)) as remote, serving([]) as native:
        pb = native.pb
        candidates = [candidate(pb, f"c{seed}-class{label}", seed, [solve(pb)], label=label) for seed, label in
                      enumerate((3, 7, 3, 7))]
        got, expected = [await evaluate(s, candidates, list(verifiers)) for s in (remote, native)]
    for mine, native_result in zip(without_keys(got), without_keys(expected)):
        if mine.id.endswith("class7"):
            assert mine.error.code == "INTERNAL" and not mine.scores and not mine.sample
            assert "triton model 'gmm_denoiser_refuses_7': INTERNAL" in mine.error.message, mine.error.message
            assert "ValueError: test denoiser: class 7 is refused" in mine.error.message, mine.error.message
            continue
        assert not mine.HasField("error"), mine.error
        # The first batched call, which failed for the class-7 rows, also ran this row: one NFE executed beyond
        # the native run, as nfe_executed promises (failed work included). Everything else is the native result.
        assert mine.nfe_executed == native_result.nfe_executed + 1
        mine.nfe_executed = native_result.nfe_executed
        assert mine == native_result


# 5. Triton killed mid-run and restarted on the same ports.

async def test_the_server_follows_triton_down_and_back(tmp_path):
    server = start_triton(REPOSITORY, log_path=tmp_path / "first.log")
    restarted = None
    try:
        async with serving(triton_argv(server.grpc_address)) as remote, serving([]) as native:
            pb = native.pb
            assert await health_status(remote) == SERVING
            # Thousands of Triton calls, so that it is surely still running when Triton dies; its seed differs from
            # the later calls', whose noises it must not leave in the cache.
            long_call = asyncio.ensure_future(evaluate(remote, [candidate(pb, "long", 101, [solve(pb, steps=3000)], label=3)]))

            async def denoiser_ran() -> bool:
                return await asyncio.to_thread(executions, server, "gmm_denoiser") > 0

            await wait_for(denoiser_ran, 10.0, "the long call's first denoiser execution")
            assert not long_call.done()
            server.kill()
            details = await expect_status(long_call, grpc.StatusCode.UNAVAILABLE)
            assert "gmm_denoiser" in details, details

            async def not_serving() -> bool:
                return await health_status(remote) == NOT_SERVING

            await wait_for(not_serving, 10.0, "NOT_SERVING after Triton died")
            down = [candidate(pb, "while-down", 102, [solve(pb)], label=3)]
            await expect_status(evaluate(remote, down), grpc.StatusCode.UNAVAILABLE)

            grpc_port = int(server.grpc_address.rsplit(":", 1)[1])
            metrics_port = int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])
            restarted = await asyncio.to_thread(
                start_triton, REPOSITORY, grpc_port=grpc_port, http_port=server.http_port, metrics_port=metrics_port,
                log_path=tmp_path / "second.log",
            )

            async def serving_again() -> bool:
                return await health_status(remote) == SERVING

            await wait_for(serving_again, DEADLINE_S, "SERVING after Triton came back")
            assert_same_evaluation(*[await evaluate(s, searches(pb)[:3]) for s in (remote, native)])
    finally:
        server.kill()
        if restarted is not None:
            await asyncio.to_thread(restarted.stop)


# 7. Flags.

@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gmm@triton:m"], "--model/--verifier NAME@triton:MODEL: add --triton HOST:PORT, Triton's gRPC endpoint"),
        (
            ["--triton", "nohostport", "--model", "gmm@triton:m"],
            "--triton: got 'nohostport'; want HOST:PORT of Triton's gRPC endpoint (e.g. triton-0:8001)",
        ),
        (
            ["--triton", "h:1", "--model", "gmm"],
            "--model: got 'gmm'; want NAME@triton:TRITON_MODEL (e.g. --model gmm@triton:gmm_denoiser)",
        ),
        (
            ["--triton", "h:1", "--model", "gmm@triton:m", "--verifier", "gmm-oracle=/weights"],
            "--verifier: got 'gmm-oracle=/weights'; want NAME@triton:TRITON_MODEL",
        ),
    ],
    ids=["model-without-triton", "triton-without-port", "model-without-triton-model", "verifier-folder-with-triton"],
)
def test_flag_errors_are_one_clear_message(argv, message):
    with pytest.raises(ConfigError) as raised:
        parse_args(argv)
    assert message in str(raised.value) and "\n" not in str(raised.value)

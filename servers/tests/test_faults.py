"""Fault injection (--faults), every kind through a real server; and that runs repeat."""

import asyncio
import json
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from noisesearch_server.backend import ConfigError
from noisesearch_server.faults import parse_fault_plan
from noisesearch_server.proto import load
from noisesearch_server.server import ServerConfig, start_server

from test_cli import LISTENING, SERVERS_DIR, spawn
from test_service import DEADLINE, expect_status, grpc_candidate, solve


@pytest.fixture
async def servers():
    """start(rules, seed) -> (Denoiser stub, channel) of a fresh server with that plan; all closed after."""
    opened = []

    async def start(rules, seed=7):
        running = await start_server(ServerConfig(port=0, faults=parse_fault_plan({"seed": seed, "rules": rules})))
        channel = grpc.aio.insecure_channel(running.address)
        opened.append((running, channel))
        return load()[1].DenoiserStub(channel), channel

    yield start
    for running, channel in opened:
        await channel.close()
        await running.stop(grace=0.5)


def named(pb, name, seed, score_xpred=True, ops=None):
    candidate = grpc_candidate(pb, seed, ops=ops if ops is not None else [solve(pb, sigma_to=1.0, steps=3)], score_xpred=score_xpred)
    candidate.id = name
    return candidate


async def evaluate(denoiser, pb, candidates, verifiers=("gmm-oracle",), timeout=DEADLINE):
    request = pb.EvaluateRequest(candidates=candidates, verifiers=list(verifiers))
    return (await denoiser.Evaluate(request, timeout=timeout)).results


async def test_fail_at_validate_costs_nothing_and_at_score_costs_everything(pb, servers):
    denoiser, _ = await servers([
        {"match": {"id": "^v-"}, "fail": {"code": "INTERNAL", "message": "injected", "stage": "validate"}},
        {"match": {"id": "^s-"}, "fail": {"code": "UNAVAILABLE", "message": "gone", "stage": "score"}},
    ])
    early, late, fine = await evaluate(denoiser, pb, [named(pb, "v-1", 1), named(pb, "s-1", 2), named(pb, "ok", 3)])
    assert (early.error.code, early.error.message, early.nfe_logical, early.nfe_executed) == ("INTERNAL", "injected", 0, 0)
    # 3 Heun steps to sigma 1 (6 NFEs) and the x-prediction ran before the failure.
    assert (late.error.code, late.error.message, late.nfe_logical, late.nfe_executed) == ("UNAVAILABLE", "gone", 7, 7)
    assert not late.scores and len(late.state_key) == 16
    assert "gmm-oracle" in fine.scores and not fine.HasField("error")


@pytest.mark.parametrize("verifier", ["gmm-classifier", "*"])
async def test_nan_makes_the_named_verifier_fail_the_candidate(pb, servers, verifier):
    denoiser, _ = await servers([{"match": {"id": "^n-"}, "nan": verifier}])
    hit, fine = await evaluate(denoiser, pb, [named(pb, "n-1", 1), named(pb, "ok", 2)], ("gmm-oracle", "gmm-classifier"))
    assert hit.error.code == "INTERNAL" and "non-finite score (nan)" in hit.error.message
    expected = "'gmm-classifier'" if verifier != "*" else "'gmm-oracle'"
    assert expected in hit.error.message
    assert set(fine.scores) == {"gmm-oracle", "gmm-classifier"}


@pytest.mark.parametrize(("stage", "what"), [("solve", "solve"), ("xpred", "x-prediction"), ("verifier", "verifier 'gmm-oracle'")])
async def test_raise_fails_only_the_hit_candidate_of_a_batch(pb, servers, stage, what):
    denoiser, _ = await servers([{"match": {"id": "^r-"}, "raise": stage}])
    results = await evaluate(denoiser, pb, [named(pb, "a", 1), named(pb, "r-1", 2), named(pb, "b", 3)])
    assert results[1].error.code == "INTERNAL"
    assert results[1].error.message == f"candidates[1]: {what} failed: InjectedFault: injected {stage} failure (faults.rules[0])"
    assert all("gmm-oracle" in results[i].scores for i in (0, 2))


async def test_latency_delays_every_request_without_blocking_the_server(pb, servers):
    denoiser, channel = await servers([{"latency_ms": 400}])
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.ensure_future(evaluate(denoiser, pb, [named(pb, "a", 1)]))
    await asyncio.sleep(0.05)
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.2)
    assert health.status == health_pb2.HealthCheckResponse.SERVING and not slow.done()
    await slow
    assert loop.time() - started >= 0.4


async def test_hang_holds_a_hit_request_until_its_deadline(pb, servers):
    denoiser, _ = await servers([{"match": {"id": "^h-"}, "hang": True}])
    hung = evaluate(denoiser, pb, [named(pb, "ok", 1), named(pb, "h-1", 2)], timeout=0.5)
    await expect_status(hung, grpc.StatusCode.DEADLINE_EXCEEDED)
    fine = await evaluate(denoiser, pb, [named(pb, "ok", 1)])
    assert "gmm-oracle" in fine[0].scores


async def test_request_status_fails_the_whole_call(pb, servers):
    denoiser, _ = await servers([{"match": {"id": "^u-"}, "request_status": "UNAVAILABLE"}])
    details = await expect_status(
        evaluate(denoiser, pb, [named(pb, "ok", 1), named(pb, "u-1", 2)]), grpc.StatusCode.UNAVAILABLE
    )
    assert details == "injected UNAVAILABLE (faults.rules[0])"
    assert "gmm-oracle" in (await evaluate(denoiser, pb, [named(pb, "ok", 1)]))[0].scores


async def test_while_file_turns_call_faults_on_and_off_while_the_server_runs(pb, servers, tmp_path):
    switch = tmp_path / "errors-on"
    denoiser, _ = await servers([{"request_status": "UNAVAILABLE", "while_file": str(switch)}])
    assert "gmm-oracle" in (await evaluate(denoiser, pb, [named(pb, "a", 1)]))[0].scores
    switch.touch()
    for _ in range(3):
        await expect_status(evaluate(denoiser, pb, [named(pb, "a", 1)]), grpc.StatusCode.UNAVAILABLE)
    switch.unlink()
    assert "gmm-oracle" in (await evaluate(denoiser, pb, [named(pb, "a", 1)]))[0].scores

    slow_switch = tmp_path / "slow-on"
    slow, _ = await servers([{"latency_ms": 400, "while_file": str(slow_switch)}])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await evaluate(slow, pb, [named(pb, "a", 1)])
    assert loop.time() - started < 0.4
    slow_switch.touch()
    started = loop.time()
    await evaluate(slow, pb, [named(pb, "a", 1)])
    assert loop.time() - started >= 0.4


async def call_outcomes(denoiser, pb, calls):
    outcomes = []
    for _ in range(calls):
        try:
            await evaluate(denoiser, pb, [named(pb, "a", 1), named(pb, "b", 2)], ())
            outcomes.append("OK")
        except grpc.aio.AioRpcError as failure:
            outcomes.append(failure.code().name)
    return outcomes


async def test_request_status_draws_each_call_afresh_so_retries_pass_and_runs_repeat(pb, servers):
    rules = [{"fraction": 0.4, "request_status": "UNAVAILABLE"}]
    first, _ = await servers(rules)
    outcomes = await call_outcomes(first, pb, 30)
    assert 4 <= outcomes.count("UNAVAILABLE") <= 20 and set(outcomes) == {"OK", "UNAVAILABLE"}, outcomes
    again, _ = await servers(rules)
    assert await call_outcomes(again, pb, 30) == outcomes


async def hit_ids(denoiser, pb, candidates, batch_size):
    hit = set()
    for offset in range(0, len(candidates), batch_size):
        for result in await evaluate(denoiser, pb, candidates[offset : offset + batch_size], ()):
            if result.HasField("error"):
                hit.add(result.id)
    return hit


async def test_runs_repeat_whatever_the_batch_server_or_base(pb, servers):
    rules = [{"fraction": 0.5, "fail": {"code": "INTERNAL", "stage": "score"}}]
    candidates = [named(pb, f"c{s}", s) for s in range(40)]
    first, _ = await servers(rules)
    hit = await hit_ids(first, pb, candidates, 40)
    assert 8 < len(hit) < 32
    second, _ = await servers(rules)
    assert await hit_ids(second, pb, candidates, 7) == hit
    # Reached through a base, each final state is hit exactly as when it came as a whole lineage.
    prefixes = await evaluate(second, pb, [named(pb, f"c{s}", s, score_xpred=False, ops=[solve(pb, sigma_to=2.0, steps=2)]) for s in range(40)], ())
    based = [
        pb.Candidate(
            id=f"c{s}", base=prefixes[s].state_key, condition=pb.Condition(class_label=2), score_xpred=True,
            lineage=pb.Lineage(ops=[solve(pb, sigma_from=2.0, sigma_to=1.0, steps=1)]),
        )
        for s in range(40)
    ]
    whole = [named(pb, f"c{s}", s, ops=[solve(pb, sigma_to=2.0, steps=2), solve(pb, sigma_from=2.0, sigma_to=1.0, steps=1)]) for s in range(40)]
    assert await hit_ids(second, pb, based, 40) == await hit_ids(first, pb, whole, 13)
    # Another seed picks other candidates.
    reseeded, _ = await servers(rules, seed=8)
    assert await hit_ids(reseeded, pb, candidates, 40) != hit


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"rules": [{"fraction": 1.5, "hang": True}]}, "--faults: rules[0].fraction: got 1.5; want a number in [0, 1]"),
        ({"rules": [{"hang": True, "nan": "*"}]}, "--faults: rules[0]: got 2 kinds (nan, hang); want exactly one of"),
        ({"rules": [{"fraction": 0.5}]}, "--faults: rules[0]: got 0 kinds (none); want exactly one of"),
        ({"rules": [{"fail": {"code": "OOPS"}}]}, "--faults: rules[0].fail.code: got \"OOPS\"; want a gRPC status name"),
        ({"rules": [{"fail": {"code": "INTERNAL", "stage": "solve"}}]}, "--faults: rules[0].fail.stage: got \"solve\"; want one of validate, score"),
        ({"rules": [{"raise": "decode"}]}, "--faults: rules[0].raise: got \"decode\"; want one of verifier, xpred, solve"),
        ({"rules": [{"match": {"id": "("}, "hang": True}]}, "--faults: rules[0].match.id: not a valid regular expression"),
        ({"rules": [{"match": {"name": "x"}, "hang": True}]}, "--faults: rules[0].match.name: unknown field; want one of id"),
        ({"rules": [{"latency_ms": -1}]}, "--faults: rules[0].latency_ms: got -1; want milliseconds in [0, 600000]"),
        ({"rules": [{"hang": False}]}, "--faults: rules[0].hang: got false; want true"),
        ({"rules": [{"exit_after_requests": 0}]}, "--faults: rules[0].exit_after_requests: got 0; want an integer >= 1"),
        ({"rules": [{"exit_after_requests": 3, "fraction": 0.5}]}, "--faults: rules[0]: exit_after_requests counts requests"),
        ({"rules": [{"request_status": "OK"}]}, "--faults: rules[0].request_status: got \"OK\"; want a gRPC status name"),
        ({"rules": [{"hang": True, "while_file": "/tmp/x"}]}, "--faults: rules[0].while_file: only latency_ms and request_status rules can come and go"),
        ({"rules": [{"request_status": "UNAVAILABLE", "while_file": ""}]}, "--faults: rules[0].while_file: got \"\"; want the path of a file"),
        ({"seed": -1, "rules": []}, "--faults: seed: got -1; want an integer in [0, 2^64)"),
        ({"rules": {}}, "--faults: rules: got {}; want a list of rules"),
        ({"rule": []}, "--faults: faults.rule: unknown field; want one of seed, rules"),
    ],
)
def test_bad_plans_are_refused_naming_the_field(plan, message):
    with pytest.raises(ConfigError) as refused:
        parse_fault_plan(plan)
    assert str(refused.value).startswith(message), str(refused.value)


def run_cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "noisesearch_server", *flags], cwd=SERVERS_DIR, capture_output=True, text=True, timeout=30
    )


def test_faults_need_the_explicit_flag():
    refused = run_cli("--port", "0", "--faults", '{"rules": []}')
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "noisesearch-server: --faults: fault injection is for tests only; add --allow-fault-injection to turn it on"
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{"rules": [{"nan": "clip"}]}', "--faults: rules[0].nan: got \"clip\"; want \"*\" or a verifier this server hosts"),
        ("/no/such/plan.json", "--faults: cannot read '/no/such/plan.json'"),
        ("{not json", "--faults: not valid JSON"),
    ],
)
def test_a_bad_plan_stops_the_server_with_one_line(source, message):
    refused = run_cli("--port", "0", "--allow-fault-injection", "--faults", source)
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"noisesearch-server: {message}"), lines


def test_exit_after_requests_kills_the_process_at_the_nth_request(tmp_path):
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"rules": [{"exit_after_requests": 2}]}))
    process = spawn("--port", "0", "--allow-fault-injection", "--faults", str(plan))
    try:
        address = LISTENING.match(process.stdout.readline().rstrip("\n")).group(1)
        messages, services = load()
        request = messages.EvaluateRequest(candidates=[grpc_candidate(messages, 1)])
        with grpc.insecure_channel(address) as channel:
            stub = services.DenoiserStub(channel)
            assert not stub.Evaluate(request, timeout=10).results[0].HasField("error")
            with pytest.raises(grpc.RpcError) as failure:
                stub.Evaluate(request, timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=15) == 1
        warning = process.stderr.read().strip().splitlines()
        assert warning == ["noisesearch-server: WARNING: fault injection is on (--faults); never use this outside tests"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()

"""The model server's Prometheus metrics, scraped over HTTP from a real server and checked against what its
gRPC answers say (and, for names, types and labels, against the contract in docs/metrics.md)."""

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from noisesearch_server.backend import ConfigError
from noisesearch_server.metrics import ServerMetrics
from noisesearch_server.proto import load
from noisesearch_server.server import parse_args, start_server

SERVERS_DIR = Path(__file__).resolve().parent.parent
CONTRACT = SERVERS_DIR.parent / "docs" / "metrics.md"
DEADLINE = 10
LISTENING = re.compile(r"^noisesearch-server listening on 127\.0\.0\.1:(\d+)$")
# Only where a GPU is present (docs/metrics.md), never for the mixture on the CPU.
DEVICE_METRICS = {"noisesearch_server_device_memory_bytes", "noisesearch_server_device_utilization_ratio"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as reply:
        return {family.name: family for family in text_string_to_metric_families(reply.read().decode())}


def value(families: dict, sample: str, **labels: str) -> float:
    """One sample's value; a counter family is named without _total, its sample with it."""
    family = families[re.sub(r"_(total|count|sum)$", "", sample)]
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, family.samples)
    return found[0]


def contract() -> dict[str, tuple[str, set[str]]]:
    """{metric: (type, labels)} from the "Model servers" table of docs/metrics.md."""
    section = CONTRACT.read_text().split("## Model servers")[1].split("\n## ")[0]
    metrics = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, kind, labels_cell = (cell.strip() for cell in line.strip().strip("|").split("|")[:3])
        names = re.findall(r"`([a-z_]+)`", names_cell)
        # `noisesearch_server_cache_hits_total`, `_misses_total`: the short forms share the first's stem.
        stem = names[0].rsplit("_", 2)[0]
        labels = {label.strip() for label in re.sub(r"\([^)]*\)", "", labels_cell).split(",") if label.strip()}
        for name in names:
            metrics[stem + name if name.startswith("_") else name] = (kind, labels)
    return metrics


def heun(pb, steps: int = 28):
    return pb.Op(solve=pb.Solve(sigma_from=40.0, sigma_to=0.0, solver="heun", steps=steps))


async def test_metrics_match_the_answers(pb):
    metrics_port = free_port()
    running = await start_server(parse_args(["--port", "0", "--metrics-port", str(metrics_port), "--cache-mb", "1"]))
    try:
        services = load()[1]
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser, verifier = services.DenoiserStub(channel), services.VerifierStub(channel)
            good = [
                pb.Candidate(
                    id=f"c{seed}", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=seed), ops=[heun(pb)]),
                    condition=pb.Condition(class_label=2),
                )
                for seed in (1, 2, 3)
            ]
            # A base this server never made: the candidate alone fails, NOT_FOUND.
            unknown_base = pb.Candidate(
                id="lost", base=bytes(16), lineage=pb.Lineage(ops=[heun(pb)]), condition=pb.Condition(class_label=2)
            )
            request = pb.EvaluateRequest(
                model="gmm", candidates=[*good, unknown_base], verifiers=["gmm-oracle", "gmm-classifier"],
                return_samples=True,
            )
            # One after the other: each call is an engine batch of its own.
            responses = [await denoiser.Evaluate(request, timeout=DEADLINE) for _ in range(2)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await denoiser.Evaluate(pb.EvaluateRequest(model="sdxl", candidates=good), timeout=DEADLINE)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            sample = pb.Sample(
                values=responses[0].results[0].sample, shape=[16], condition=pb.Condition(class_label=2)
            )
            scored = await verifier.Score(pb.ScoreRequest(verifiers=["gmm-oracle"], samples=[sample] * 2), timeout=DEADLINE)
            await denoiser.Describe(pb.DescribeRequest(), timeout=DEADLINE)
        families = await asyncio.to_thread(scrape, metrics_port)
    finally:
        await running.stop(grace=0.5)

    results = [result for response in responses for result in response.results]
    failed = [result for result in results if result.HasField("error")]
    assert [result.error.code for result in failed] == ["NOT_FOUND", "NOT_FOUND"]
    # heun over 28 steps to sigma 0: 27 steps of 2 evaluations and a last Euler step; the repeat resumes.
    assert sum(result.nfe_executed for result in results) == 3 * 55
    assert value(families, "noisesearch_server_nfe_executed_total", model="gmm") == 3 * 55

    assert value(families, "noisesearch_server_candidates_total", status="OK") == len(results) - len(failed)
    assert value(families, "noisesearch_server_candidates_total", status="NOT_FOUND") == len(failed)

    hits = sum(response.cache_hits for response in responses)
    assert hits == 3
    assert value(families, "noisesearch_server_cache_hits_total") == hits
    assert value(families, "noisesearch_server_cache_misses_total") == len(results) - len(failed) - hits
    assert value(families, "noisesearch_server_cache_evictions_total") == 0
    assert value(families, "noisesearch_server_cache_bytes") > 0

    for method, code, calls in [("Evaluate", "OK", 2), ("Evaluate", "NOT_FOUND", 1), ("Score", "OK", 1), ("Describe", "OK", 1)]:
        assert value(families, "noisesearch_server_requests_total", method=method, code=code) == calls

    # The refused call never reached the batcher: two batches of four candidates each, out of the default --max-batch 128.
    assert value(families, "noisesearch_server_batch_candidates_count") == 2
    assert value(families, "noisesearch_server_batch_candidates_sum") == 8
    assert value(families, "noisesearch_server_batch_fill_ratio_sum") == pytest.approx(8 / 128)
    assert value(families, "noisesearch_server_queue_wait_seconds_count") == 2

    timings = [timing for response in [*responses, scored] for timing in response.verifier_timings]
    for name in ("gmm-oracle", "gmm-classifier"):
        mine = [timing for timing in timings if timing.verifier == name]
        assert value(families, "noisesearch_server_verifier_samples_total", verifier=name) == sum(t.calls for t in mine)
        assert value(families, "noisesearch_server_verifier_seconds_total", verifier=name) == pytest.approx(
            math.fsum(t.seconds for t in mine), rel=1e-9
        )
    assert value(families, "noisesearch_server_verifier_samples_total", verifier="gmm-oracle") == 2 * 3 + 2
    assert value(families, "noisesearch_server_compute_seconds_total", op="solve") > 0
    assert value(families, "noisesearch_server_compute_seconds_total", op="verify") > 0

    for name, (kind, labels) in contract().items():
        if name in DEVICE_METRICS:
            assert name not in families, "the mixture's server uses no GPU"
            continue
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
        assert all(set(s.labels) - {"le"} == labels for s in family.samples), (name, family.samples[:2])


async def test_abandoned_calls_are_counted_by_why(pb):
    metrics_port = free_port()
    hang = json.dumps({"rules": [{"match": {"id": "^h-"}, "hang": True}]})
    running = await start_server(parse_args(
        ["--port", "0", "--metrics-port", str(metrics_port), "--faults", hang, "--allow-fault-injection"]
    ))
    try:
        request = pb.EvaluateRequest(
            candidates=[pb.Candidate(id="h-1", lineage=pb.Lineage(noise=pb.NoiseRecipe(seed=1), ops=[heun(pb, 2)]))]
        )
        async with grpc.aio.insecure_channel(running.address) as channel:
            denoiser = load()[1].DenoiserStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await denoiser.Evaluate(request, timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            call = denoiser.Evaluate(request, timeout=DEADLINE)
            await asyncio.sleep(0.2)
            call.cancel()
            # The server learns of both asynchronously: scrape until it has, within a deadline.
            wanted = {"DEADLINE_EXCEEDED": 1.0, "CANCELLED": 1.0}
            deadline = time.monotonic() + DEADLINE
            while True:
                families = await asyncio.to_thread(scrape, metrics_port)
                counted = {
                    s.labels["code"]: s.value for s in families["noisesearch_server_requests"].samples
                    if s.name.endswith("_total")
                }
                if counted == wanted or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert counted == wanted
    finally:
        await running.stop(grace=0.5)


# Checked before importing torch, which alone takes seconds of a CPU-only run.
@pytest.mark.skipif(not Path("/dev/nvidiactl").exists(), reason="no NVIDIA GPU here")
def test_device_memory_is_reported_where_torch_uses_a_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    block = torch.empty(64 << 20, dtype=torch.uint8, device="cuda:0")
    metrics = ServerMetrics("tiny", max_batch=8)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    allocated = value(families, "noisesearch_server_device_memory_bytes", device="cuda:0", kind="allocated")
    assert allocated >= block.nbytes
    assert value(families, "noisesearch_server_device_memory_bytes", device="cuda:0", kind="reserved") >= allocated


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from /proc: whatever the code under test thinks it opened."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("with_metrics", [False, True])
def test_the_metrics_port_is_opened_only_when_asked_for(with_metrics):
    metrics_port = free_port()
    flags = ["--metrics-port", str(metrics_port)] if with_metrics else []
    process = subprocess.Popen(
        [sys.executable, "-m", "noisesearch_server", "--host", "127.0.0.1", "--port", "0", *flags],
        cwd=SERVERS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        match = LISTENING.match(process.stdout.readline().rstrip("\n"))
        assert match, process.stderr.read() if process.poll() is not None else "no address announced"
        grpc_port = int(match.group(1))
        assert listening_ports(process.pid) == ({grpc_port, metrics_port} if with_metrics else {grpc_port})
        if with_metrics:
            families = scrape(metrics_port)
            assert value(families, "noisesearch_server_nfe_executed_total", model="gmm") == 0
            assert not DEVICE_METRICS & set(families)
    finally:
        process.terminate()
        process.wait(timeout=15)
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize(
    ("value_given", "fragment"),
    [
        ("nine", "argument --metrics-port: invalid int value: 'nine'"),
        ("70000", "--metrics-port: got 70000; want 0 (off) or a port up to 65535"),
        ("-1", "--metrics-port: got -1"),
    ],
)
def test_a_bad_metrics_port_is_refused(value_given, fragment):
    with pytest.raises(ConfigError) as refused:
        parse_args(["--metrics-port", value_given])
    assert fragment in str(refused.value)


def test_a_bad_or_taken_metrics_port_is_one_line_on_stderr():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, code, fragment in [
            (["--metrics-port", "nine"], 2, "--metrics-port: invalid int value"),
            (["--metrics-port", str(port)], 1, f"--metrics-port {port}: cannot serve /metrics on 127.0.0.1"),
        ]:
            result = subprocess.run(
                [sys.executable, "-m", "noisesearch_server", "--port", "0", *flags], cwd=SERVERS_DIR,
                capture_output=True, text=True, timeout=30,
            )
            assert result.returncode == code, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr

"""`python -m noisesearch_server` as the TypeScript side spawns it."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from noisesearch_server.proto import load

SERVERS_DIR = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^noisesearch-server listening on (127\.0\.0\.1:\d+)$")


def spawn(*flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "noisesearch_server", *flags],
        cwd=SERVERS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_starts_on_port_0_answers_and_exits_0_on_signal(stop_signal):
    process = spawn("--host", "127.0.0.1", "--port", "0", "--model", "gmm", "--max-batch", "32")
    try:
        match = LISTENING.match(process.stdout.readline().rstrip("\n"))
        assert match, "first stdout line must announce the address"
        messages, services = load()
        with grpc.insecure_channel(match.group(1)) as channel:
            description = services.DenoiserStub(channel).Describe(messages.DescribeRequest(), timeout=10)
        assert description.model == "gmm" and description.max_batch == 32
        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_bad_flags_exit_2_with_one_line_on_stderr():
    for flags in (["--bogus"], ["--max-batch", "0"], ["--model", "flux"], ["--port", "70000"]):
        result = subprocess.run(
            [sys.executable, "-m", "noisesearch_server", *flags], cwd=SERVERS_DIR, capture_output=True, text=True,
            timeout=30,
        )
        assert result.returncode == 2, flags
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_describe_prints_the_model_as_proto_json_and_serves_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "noisesearch_server", "--describe", "--model", "gmm", "--max-batch", "16"],
        cwd=SERVERS_DIR, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    description = json.loads(result.stdout)
    assert description["model"] == "gmm" and description["maxBatch"] == 16
    assert [v["name"] for v in description["verifiers"]] == ["gmm-oracle", "gmm-classifier", "gmm-selfsup"]
    assert description["defaultSolver"] == "heun" and description["defaultSteps"] == 28


def test_a_models_file_names_triton_models_and_flags_add_verifiers(tmp_path):
    from noisesearch_server.backend import ConfigError
    from noisesearch_server.server import parse_args

    models = tmp_path / "models.json"
    models.write_text(json.dumps(
        {"models": {"gmm": {"triton": "gmm_denoiser", "verifiers": {"gmm-oracle": {"triton": "gmm_oracle"}}}, "sit": "/w"}}
    ))
    config = parse_args([
        "--triton", "triton-0:8001", "--models", str(models), "--model", "gmm",
        "--verifier", "gmm-selfsup@triton:gmm_selfsup",
    ])
    assert (config.triton, config.model, config.triton_model) == ("triton-0:8001", "gmm", "gmm_denoiser")
    assert config.triton_verifiers == (("gmm-oracle", "gmm_oracle"), ("gmm-selfsup", "gmm_selfsup"))
    # A folder entry is a PyTorch model, not a Triton one: the refusal shows the shape a Triton entry takes.
    with pytest.raises(ConfigError, match=r'models.sit must be \{"triton": "TRITON_MODEL"'):
        parse_args(["--triton", "triton-0:8001", "--models", str(models), "--model", "sit"])

"""What the tests of the noisesearch server over a real tritonserver share: the committed gmm repository, copies of
it with test-only models added, free ports, and a server started in this process from its own command line."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from noisesearch_server.proto import load
from noisesearch_server.server import RunningServer, parse_args, start_server
from noisesearch_server.triton.launch import REPO_ROOT, SETUP_HINT

REPOSITORY = REPO_ROOT / "deploy" / "triton" / "gmm"
# The orchestrator's verifier name -> the Triton model that computes it, in the native server's order so that
# both servers describe their verifiers alike.
GMM_VERIFIERS = {"gmm-oracle": "gmm_oracle", "gmm-classifier": "gmm_classifier", "gmm-selfsup": "gmm_selfsup"}
DEADLINE_S = 30.0


def skip_without_triton() -> None:
    """Skips the calling test module when the Triton client or Triton's own venv is missing."""
    pytest.importorskip("tritonclient.grpc")
    if not (REPO_ROOT / ".venv-triton" / "bin" / "python").exists():
        pytest.skip(f"no .venv-triton: {SETUP_HINT}", allow_module_level=True)


def copy_repository(target: Path, source: Path = REPOSITORY) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def add_model(repository: Path, name: str, like: str, model_py: str, edit: Callable[[str], str] = lambda text: text) -> None:
    """A model `name` whose config.pbtxt is `like`'s, renamed and passed through `edit`, running `model_py`."""
    config = (repository / like / "config.pbtxt").read_text()
    renamed, count = re.subn(rf'^name: "{like}"$', f'name: "{name}"', config, flags=re.MULTILINE)
    assert count == 1, f"{like}/config.pbtxt has no name line"
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(edit(renamed))
    (repository / name / "1" / "model.py").write_text(model_py)


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; fails loudly when a repository edit no longer matches the committed config."""
    assert text.count(old) >= 1, f"{old!r} not in the config"
    return text.replace(old, new)


def triton_argv(address: str, model: str = "gmm_denoiser", verifiers: dict[str, str] = GMM_VERIFIERS) -> list[str]:
    argv = ["--triton", address, "--model", f"gmm@triton:{model}"]
    for name, triton_model in verifiers.items():
        argv += ["--verifier", f"{name}@triton:{triton_model}"]
    return argv


@dataclass
class Served:
    running: RunningServer
    pb: ModuleType
    denoiser: object
    verifier: object
    health: health_pb2_grpc.HealthStub


@asynccontextmanager
async def serving(argv: list[str], backend=None) -> AsyncIterator[Served]:
    """A noisesearch server on a free port from `argv` (its command line), with client stubs; stopped after."""
    config = parse_args(["--port", "0", *argv])
    running = await start_server(config, backend)
    messages, services = load()
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield Served(
                running, messages, services.DenoiserStub(channel), services.VerifierStub(channel),
                health_pb2_grpc.HealthStub(channel),
            )
    finally:
        await running.stop(grace=0.5)


async def health_status(served: Served) -> int:
    response = await served.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S)
    return response.status


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Seconds until `condition` holds; fails naming `what` after timeout_s."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what}: not after {timeout_s:g} s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start

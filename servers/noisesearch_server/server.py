"""Command line, start-up and graceful shutdown of the model server."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .backend import Backend, ConfigError
from .batcher import Batcher
from .codec import encode_description
from .diffusion_backend import DEFAULT_MAX_REQUEST_NFE, DiffusionBackend
from .faults import FaultPlan, load_fault_plan
from .gmm import GaussianMixture, GmmConfig, GmmPopulation, gmm_verifiers
from .proto import load, service_name
from .service import DenoiserService, VerifierService

GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50151
    model: str = "gmm"
    max_batch: int = 64
    max_concurrency: int = 8
    batch_window_ms: float = 2.0
    cache_entries: int = 50_000
    max_request_nfe: int = DEFAULT_MAX_REQUEST_NFE
    describe_only: bool = False
    faults: FaultPlan | None = None


def build_gmm_backend(config: ServerConfig) -> Backend:
    gmm_config = GmmConfig()
    problems = gmm_config.problems()
    if problems:
        raise ConfigError("gmm config: " + "; ".join(problems))
    model = GaussianMixture(gmm_config)
    return DiffusionBackend(
        model,
        gmm_verifiers(model),
        max_batch=config.max_batch,
        max_concurrency=config.max_concurrency,
        cache_entries=config.cache_entries,
        population=GmmPopulation(model),
        max_request_nfe=config.max_request_nfe,
        faults=config.faults,
    )


MODELS: dict[str, Callable[[ServerConfig], Backend]] = {"gmm": build_gmm_backend}


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def parse_args(argv: Sequence[str]) -> ServerConfig:
    parser = _OneLineParser(prog="python -m noisesearch_server", description="noisesearch model server")
    defaults = ServerConfig()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--model", default=defaults.model, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    parser.add_argument("--batch-window-ms", type=float, default=defaults.batch_window_ms)
    parser.add_argument("--cache-entries", type=int, default=defaults.cache_entries)
    parser.add_argument(
        "--max-request-nfe", type=int, default=defaults.max_request_nfe,
        help="refuse an Evaluate call whose candidates cost more logical NFEs than this",
    )
    parser.add_argument("--faults", metavar="FILE_OR_JSON", help="fault injection plan (tests only; see README)")
    parser.add_argument(
        "--allow-fault-injection", action="store_true", help="required with --faults, so it is never on by accident"
    )
    parser.add_argument(
        "--describe", action="store_true", help="print the model description as JSON and exit, serving nothing"
    )
    args = parser.parse_args(argv)
    if args.faults is not None and not args.allow_fault_injection:
        raise ConfigError("--faults: fault injection is for tests only; add --allow-fault-injection to turn it on")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        max_batch=args.max_batch,
        max_concurrency=args.max_concurrency,
        batch_window_ms=args.batch_window_ms,
        cache_entries=args.cache_entries,
        max_request_nfe=args.max_request_nfe,
        describe_only=args.describe,
        faults=load_fault_plan(args.faults) if args.faults is not None else None,
    )
    if config.model not in MODELS:
        raise ConfigError(f"--model: unknown model {config.model!r}; want one of {', '.join(MODELS)}")
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"--port: got {config.port}; want 0 (any free port) to 65535")
    if not 0 <= config.batch_window_ms <= 1000:
        raise ConfigError(f"--batch-window-ms: got {config.batch_window_ms}; want 0 to 1000")
    return config


def description_json(backend: Backend) -> str:
    """The Describe answer as proto JSON, so clients can validate a spec before any server starts."""
    return json_format.MessageToJson(encode_description(backend.describe()), always_print_fields_with_no_presence=True)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    batcher: Batcher
    executor: ThreadPoolExecutor
    backend: Backend
    address: str

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        # NOT_SERVING first, so that balancers stop routing here while in-flight calls finish.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.batcher.close()
        self.executor.shutdown(wait=True)


async def start_server(config: ServerConfig, backend: Backend | None = None) -> RunningServer:
    backend = backend or MODELS[config.model](config)
    _, services = load()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noisesearch-engine")
    batcher = Batcher(backend, config.max_batch, config.batch_window_ms / 1000, executor)
    # Without this, a second server on a busy port binds too and the two silently share traffic.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    services.add_DenoiserServicer_to_server(DenoiserService(backend, batcher, config.faults), server)
    services.add_VerifierServicer_to_server(VerifierService(backend, executor), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    served = [service_name("Denoiser"), service_name("Verifier")]
    reflection.enable_server_reflection([*served, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(_address(config.host, config.port))
    batcher.start()
    await server.start()
    for name in ["", *served]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, batcher, executor, backend, _address(config.host, port))


async def serve(config: ServerConfig, backend: Backend) -> None:
    running = await start_server(config, backend)
    print(f"noisesearch-server listening on {running.address}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await running.stop()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        backend = MODELS[config.model](config)
    except ConfigError as error:
        print(f"noisesearch-server: {error}", file=sys.stderr)
        return 2
    if config.faults is not None:
        warning = "WARNING: fault injection is on (--faults); never use this outside tests"
        print(f"noisesearch-server: {warning}", file=sys.stderr, flush=True)
    if config.describe_only:
        print(description_json(backend))
        return 0
    try:
        asyncio.run(serve(config, backend))
    except (OSError, RuntimeError) as error:
        print(f"noisesearch-server: {error}", file=sys.stderr)
        return 1
    return 0

"""Command line, start-up and graceful shutdown of the model server."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import signal
import ssl
import sys
from pathlib import Path
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
from .metrics import ServerMetrics
from .proto import service_name
from .service import DenoiserService, VerifierService, add_services
from .sim import SimulatedBackend, SimulatedCost

GRACE_SECONDS = 5.0
# How often a server with remote networks (Triton) asks whether they are ready, to say so in its health.
READINESS_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50151
    model: str = "gmm"
    max_batch: int = 128
    max_concurrency: int = 8
    batch_window_ms: float = 2.0
    cache_mb: float = 1024.0
    max_request_nfe: int = DEFAULT_MAX_REQUEST_NFE
    describe_only: bool = False
    faults: FaultPlan | None = None
    # A PyTorch model: its weights folder, and each co-located verifier's folder.
    model_folder: str | None = None
    verifier_folders: tuple[tuple[str, str], ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    resolution: int | None = None
    # gRPC's default 4 MB is one 1024-px latent batch of four; raised deliberately, on both ends (the client
    # sets the same limit), so a batch that is still too large fails with an error that says so.
    max_message_mb: int = 256
    # Prometheus /metrics on this port of `host` (docs/metrics.md); 0: not served.
    metrics_port: int = 0
    # Population metrics of an image model's pictures: FID and IS (FID Inception weights and a reference
    # .npz), CLIP-FID (a CLIP folder and its reference .npz).
    fid_inception: str | None = None
    fid_reference: str | None = None
    clip_fid: str | None = None
    clip_fid_reference: str | None = None
    # A Triton fleet (docs/triton.md): the denoiser and each verifier are models of the Triton server at this
    # address; the start waits triton_wait_s for it, and each call has triton_timeout_s.
    triton: str | None = None
    triton_model: str | None = None
    triton_verifiers: tuple[tuple[str, str], ...] = ()
    triton_wait_s: float = 300.0
    triton_timeout_s: float = 600.0
    # TLS on the gRPC port: a certificate and its key serve TLS; a CA as well requires every client to present
    # a certificate that CA signed (mutual TLS). PEM files, read at start-up (docs/security.md).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    # --model sim (benchmarks and scale tests only): each engine run takes at least
    # sim_batch_ms + sim_item_ms per candidate of wall time (sim.py).
    sim_batch_ms: float = 10.0
    sim_item_ms: float = 0.0

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * (1 << 20))


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
        cache_bytes=config.cache_bytes,
        population=GmmPopulation(model),
        max_request_nfe=config.max_request_nfe,
        faults=config.faults,
    )


def build_sim_backend(config: ServerConfig) -> Backend:
    inner = build_gmm_backend(config)
    assert isinstance(inner, DiffusionBackend)
    return SimulatedBackend(inner, SimulatedCost(config.sim_batch_ms, config.sim_item_ms))


TORCH_EXTRA = "pip install -e 'servers[torch]' (in the project's .venv: npm test installs it)"


def build_torch_backend(config: ServerConfig) -> Backend:
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"--model {config.model}={config.model_folder}: PyTorch models need the torch extra; run {TORCH_EXTRA}")
    from .torchmodels.registry import load_model, load_verifiers

    try:
        model = load_model(config.model, config.model_folder, config.device, config.dtype, config.resolution)
        verifiers = load_verifiers(dict(config.verifier_folders), model, config.dtype)
        image_metrics = None
        if config.fid_inception or config.fid_reference or config.clip_fid or config.clip_fid_reference:
            import torch

            from .torchmodels.image_metrics import ImagePopulationMetrics

            # float32 whatever the model runs in: FIDs compare with published ones only at full precision.
            image_metrics = ImagePopulationMetrics.load(
                config.fid_inception, config.fid_reference, config.clip_fid, config.clip_fid_reference,
                model.device, torch.float32,
            )
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        # A folder that passed the file checks but whose contents do not load (truncated weights, a config
        # of another architecture): still one line, naming the folder.
        raise ConfigError(f"--model {config.model}={config.model_folder}: could not load: {type(error).__name__}: {error}") from None
    return DiffusionBackend(
        model,
        verifiers,
        max_batch=config.max_batch,
        max_concurrency=config.max_concurrency,
        cache_bytes=config.cache_bytes,
        max_request_nfe=config.max_request_nfe,
        faults=config.faults,
        image_metrics=image_metrics,
    )


TRITON_EXTRA = "pip install -e 'servers[triton]' (in the project's .venv: npm test installs it)"


def build_triton_backend(config: ServerConfig) -> Backend:
    if importlib.util.find_spec("tritonclient") is None:
        raise ConfigError(f"--triton {config.triton}: the Triton backend needs the triton extra; run {TRITON_EXTRA}")
    from .triton.remote import connect

    assert config.triton is not None and config.triton_model is not None
    denoiser, verifiers, readiness = connect(
        config.triton, config.model, config.triton_model, config.triton_verifiers,
        wait_s=config.triton_wait_s, timeout_s=config.triton_timeout_s, max_message_bytes=config.max_message_mb << 20,
    )
    # The mixture's population metrics are closed-form sums over its known components, not a network: computed here.
    population = None
    if config.model == "gmm":
        mixture = GaussianMixture(GmmConfig())
        if denoiser.spec.latent_shape != mixture.spec.latent_shape:
            # Else the server would start and fail every Population call on the mixture's own dimension.
            denoiser.client.close()
            raise ConfigError(
                f"triton model {config.triton_model!r} (--model gmm@triton:{config.triton_model}): input 'x' has latent "
                f"shape {list(denoiser.spec.latent_shape)}; want {list(mixture.spec.latent_shape)}, the embedded "
                f"mixture's, which the name gmm stands for"
            )
        population = GmmPopulation(mixture)
    backend = DiffusionBackend(
        denoiser,
        verifiers,
        max_batch=config.max_batch,
        max_concurrency=config.max_concurrency,
        cache_bytes=config.cache_bytes,
        population=population,
        max_request_nfe=config.max_request_nfe,
        faults=config.faults,
        remote=readiness,
    )
    return backend


MODELS: dict[str, Callable[[ServerConfig], Backend]] = {"gmm": build_gmm_backend, "sim": build_sim_backend}


def build_backend(config: ServerConfig) -> Backend:
    if config.triton is not None:
        return build_triton_backend(config)
    return build_torch_backend(config) if config.model_folder is not None else MODELS[config.model](config)


def _named_folder(flag: str, value: str) -> tuple[str, str]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise ConfigError(f"{flag}: got {value!r}; want NAME=DIR (e.g. {flag} flux=/weights/FLUX.1-dev)")
    return name, folder


def _triton_model(flag: str, value: str) -> tuple[str, str]:
    name, sep, model = value.partition("@triton:")
    if not sep or not name or not model:
        raise ConfigError(f"{flag}: got {value!r}; want NAME@triton:TRITON_MODEL (e.g. {flag} gmm@triton:gmm_denoiser)")
    return name, model


def _models_file_entry(path: str, model: str) -> object:
    """`model`'s entry of a models file: {"models": {NAME: ENTRY, ...}}."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--models: cannot read {path}: {error}") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict) or not models:
        raise ConfigError(f'--models: {path} has no "models" object; want {{"models": {{"flux": "/weights/flux"}}}}')
    if model not in models:
        raise ConfigError(f"--models: {path} names {', '.join(models)}, not --model {model!r}")
    return models[model]


def _models_file(path: str, model: str) -> tuple[str, dict[str, str]]:
    """(model folder, verifier folders) for `model` from a models file:
    {"models": {"flux": {"folder": DIR, "verifiers": {"clip-score": DIR}}, "sit": DIR}}."""
    entry = _models_file_entry(path, model)
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
        raise ConfigError(f'--models: {path}: models.{model} must be a folder or {{"folder": DIR, "verifiers": {{...}}}}')
    verifiers = entry.get("verifiers", {})
    if not isinstance(verifiers, dict) or not all(isinstance(v, str) for v in verifiers.values()):
        raise ConfigError(f"--models: {path}: models.{model}.verifiers must map verifier names to folders")
    return entry["folder"], verifiers


def _triton_models_file(path: str, model: str) -> tuple[str, list[tuple[str, str]]]:
    """(Triton model, [(verifier, Triton model)]) for `model` from a models file:
    {"models": {"gmm": {"triton": "gmm_denoiser", "verifiers": {"gmm-oracle": {"triton": "gmm_oracle"}}}}}."""
    entry = _models_file_entry(path, model)
    want = f'{{"triton": "TRITON_MODEL", "verifiers": {{"NAME": {{"triton": "TRITON_MODEL"}}}}}}'
    if not isinstance(entry, dict) or not isinstance(entry.get("triton"), str) or not entry["triton"]:
        raise ConfigError(f"--models: {path}: with --triton, models.{model} must be {want}")
    verifiers = entry.get("verifiers", {})
    if not isinstance(verifiers, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("triton"), str) and v["triton"] for v in verifiers.values()
    ):
        raise ConfigError(f"--models: {path}: models.{model}.verifiers must map verifier names to {{\"triton\": \"TRITON_MODEL\"}}")
    return entry["triton"], [(name, v["triton"]) for name, v in verifiers.items()]


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; want milliseconds, a number of 0 or more (e.g. 10 or 0.5)")
    return value


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def parse_args(argv: Sequence[str]) -> ServerConfig:
    parser = _OneLineParser(prog="python -m noisesearch_server", description="noisesearch model server")
    defaults = ServerConfig()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument(
        "--model", default=defaults.model,
        help="gmm (the embedded model); sim (the gmm at a simulated GPU's pace, for benchmarks and scale tests "
        "only: it sleeps rather than computes, see --sim-batch-ms); NAME=DIR for a PyTorch model loaded from a "
        "local folder (flux, sdxl, sdxl-dpo, pixart-sigma, sit); or NAME with --models",
    )
    parser.add_argument(
        "--sim-batch-ms", type=_milliseconds, metavar="MS",
        help=f"with --model sim (benchmarks and scale tests only): each engine batch takes at least this many ms, "
        f"plus --sim-item-ms per candidate (default {defaults.sim_batch_ms:g})",
    )
    parser.add_argument(
        "--sim-item-ms", type=_milliseconds, metavar="MS",
        help=f"with --model sim (benchmarks and scale tests only): ms each candidate adds to its batch "
        f"(default {defaults.sim_item_ms:g})",
    )
    parser.add_argument("--models", metavar="FILE", help="a JSON models file naming model and verifier folders")
    parser.add_argument(
        "--verifier", action="append", default=[], metavar="NAME=DIR",
        help="a co-located PyTorch verifier (clip-score, clip-imagenet, aesthetic, pickscore, dino-imagenet, "
        "selfsup, imagereward) loaded from a local folder; repeat for several",
    )
    parser.add_argument(
        "--triton", metavar="HOST:PORT",
        help="serve through a Triton server's gRPC endpoint: --model NAME@triton:TRITON_MODEL and "
        "--verifier NAME@triton:TRITON_MODEL name its models (docs/triton.md)",
    )
    parser.add_argument(
        "--triton-wait", type=float, default=defaults.triton_wait_s, metavar="SECONDS",
        help="how long the start waits for Triton and its models to be ready",
    )
    parser.add_argument(
        "--triton-timeout", type=float, default=defaults.triton_timeout_s, metavar="SECONDS",
        help="deadline of one Triton call",
    )
    parser.add_argument("--device", default=defaults.device, help="auto (a GPU when there is one), cpu, cuda[:N]")
    parser.add_argument("--dtype", default=defaults.dtype, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--resolution", type=int, help="image size in pixels (default: the model's own)")
    parser.add_argument("--max-message-mb", type=int, default=defaults.max_message_mb)
    parser.add_argument("--fid-inception", metavar="FILE", help="pt_inception-2015-12-05-6726825d.pth, for FID and IS")
    parser.add_argument("--fid-reference", metavar="NPZ", help="reference statistics (mu, sigma) for FID")
    parser.add_argument("--clip-fid", metavar="DIR", help="a CLIP folder, for CLIP-FID")
    parser.add_argument("--clip-fid-reference", metavar="NPZ", help="reference statistics for CLIP-FID")
    parser.add_argument(
        "--metrics-port", type=int, default=defaults.metrics_port, metavar="N",
        help="serve Prometheus /metrics on this port of --host (0: off)",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain); goes with --tls-key")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tls-ca", metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS); goes with --tls-cert and --tls-key",
    )
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    parser.add_argument("--batch-window-ms", type=float, default=defaults.batch_window_ms)
    parser.add_argument(
        "--cache-mb", type=float, default=defaults.cache_mb, help="bound on the lineage cache's states, in MiB"
    )
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
    for flag, given in (("--sim-batch-ms", args.sim_batch_ms), ("--sim-item-ms", args.sim_item_ms)):
        if given is not None and args.model != "sim":
            raise ConfigError(f"{flag}: only the simulated server takes it; add --model sim (benchmarks and scale tests only)")
    model, model_folder, verifiers = args.model, None, {}
    triton_model, triton_verifiers = None, []
    if args.triton is not None:
        host, sep, port = args.triton.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--triton: got {args.triton!r}; want HOST:PORT of Triton's gRPC endpoint (e.g. triton-0:8001)")
        if args.models is not None:
            triton_model, triton_verifiers = _triton_models_file(args.models, args.model)
        else:
            model, triton_model = _triton_model("--model", args.model)
        triton_verifiers += [_triton_model("--verifier", value) for value in args.verifier]
        if args.triton_wait < 0 or not args.triton_timeout > 0:
            raise ConfigError(
                f"--triton-wait {args.triton_wait:g} / --triton-timeout {args.triton_timeout:g}: want a wait of 0 s "
                f"or more and a timeout above 0 s"
            )
    elif "@triton:" in args.model or any("@triton:" in value for value in args.verifier):
        raise ConfigError("--model/--verifier NAME@triton:MODEL: add --triton HOST:PORT, Triton's gRPC endpoint")
    elif "=" in args.model:
        model, model_folder = _named_folder("--model", args.model)
    elif args.models is not None:
        model_folder, verifiers = _models_file(args.models, args.model)
    elif args.model not in MODELS:
        raise ConfigError(
            f"--model: unknown model {args.model!r}; want gmm, sim (benchmarks only), or NAME=DIR to load a PyTorch "
            f"model from a folder"
        )
    if args.triton is None:
        verifiers.update(_named_folder("--verifier", value) for value in args.verifier)
    if verifiers and model_folder is None:
        raise ConfigError("--verifier: the embedded gmm hosts its own verifiers; --verifier goes with --model NAME=DIR")
    check_tls(args.tls_cert, args.tls_key, args.tls_ca)
    if args.cache_mb < 0:
        raise ConfigError(f"--cache-mb: got {args.cache_mb}; want 0 (no cache) or more")
    if args.max_message_mb < 4:
        raise ConfigError(f"--max-message-mb: got {args.max_message_mb}; want at least gRPC's default 4")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        model=model,
        max_batch=args.max_batch,
        max_concurrency=args.max_concurrency,
        batch_window_ms=args.batch_window_ms,
        cache_mb=args.cache_mb,
        max_request_nfe=args.max_request_nfe,
        describe_only=args.describe,
        faults=load_fault_plan(args.faults) if args.faults is not None else None,
        model_folder=model_folder,
        verifier_folders=tuple(verifiers.items()),
        device=args.device,
        dtype=args.dtype,
        resolution=args.resolution,
        max_message_mb=args.max_message_mb,
        metrics_port=args.metrics_port,
        fid_inception=args.fid_inception,
        fid_reference=args.fid_reference,
        clip_fid=args.clip_fid,
        clip_fid_reference=args.clip_fid_reference,
        triton=args.triton,
        triton_model=triton_model,
        triton_verifiers=tuple(triton_verifiers),
        triton_wait_s=args.triton_wait,
        triton_timeout_s=args.triton_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        sim_batch_ms=defaults.sim_batch_ms if args.sim_batch_ms is None else args.sim_batch_ms,
        sim_item_ms=defaults.sim_item_ms if args.sim_item_ms is None else args.sim_item_ms,
    )
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"--port: got {config.port}; want 0 (any free port) to 65535")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: got {config.metrics_port}; want 0 (off) or a port up to 65535")
    if config.metrics_port != 0 and config.metrics_port == config.port:
        raise ConfigError(f"--metrics-port {config.metrics_port}: the same port as --port; give /metrics a port of its own")
    if not 0 <= config.batch_window_ms <= 1000:
        raise ConfigError(f"--batch-window-ms: got {config.batch_window_ms}; want 0 to 1000")
    return config


def check_tls(cert: str | None, key: str | None, ca: str | None) -> None:
    """Refuses a TLS configuration that could not serve, before any model loads: a missing half of the pair,
    a CA without a certificate to serve with, a file that is not readable PEM, or a key that is not the
    certificate's. Messages name files, never their contents."""
    if cert is None and key is None:
        if ca is not None:
            raise ConfigError("--tls-ca: mutual TLS also needs the server's own --tls-cert and --tls-key")
        return
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise ConfigError(f"{given}: TLS needs both a certificate and its key; add {missing} PEM")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is None:
            continue
        try:
            Path(path).read_bytes()
        except OSError as error:
            raise ConfigError(f"{flag} {path}: cannot read it ({error.strerror or error}); want a readable PEM file") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ConfigError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its matching private key ({error.reason})"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(f"--tls-ca {ca}: not a PEM CA certificate ({getattr(error, 'reason', None) or error})") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The gRPC port's credentials: None (plaintext) without a certificate; with a CA, clients must present a
    certificate it signed, and a client without one fails the handshake before any call."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    ca = Path(config.tls_ca).read_bytes() if config.tls_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


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
    metrics: ServerMetrics
    address: str
    monitor: asyncio.Task | None = None

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        if self.monitor is not None:
            self.monitor.cancel()
            await asyncio.gather(self.monitor, return_exceptions=True)
        # NOT_SERVING first, so that balancers stop routing here while in-flight calls finish.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.batcher.close()
        self.executor.shutdown(wait=True)
        # In a thread: closing waits for the HTTP server's poll loop (up to half a second).
        await asyncio.to_thread(self.metrics.close)
        self.backend.close()


async def start_server(config: ServerConfig, backend: Backend | None = None) -> RunningServer:
    backend = backend or build_backend(config)
    description = backend.describe()
    # The simulated server's engine and cache are its gmm's: their counters are read from there.
    engine_backend = backend.inner if isinstance(backend, SimulatedBackend) else backend
    if isinstance(engine_backend, DiffusionBackend):
        metrics = ServerMetrics(description.model.name, config.max_batch, engine_backend.engine.stats, engine_backend.cache)
    else:
        metrics = ServerMetrics(description.model.name, config.max_batch)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noisesearch-engine")
    batcher = Batcher(backend, config.max_batch, config.batch_window_ms / 1000, executor, metrics)
    # Without this, a second server on a busy port binds too and the two silently share traffic.
    limit = config.max_message_mb << 20
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    add_services(server, DenoiserService(backend, batcher, metrics, config.faults), VerifierService(backend, executor, metrics))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    served = [service_name("Denoiser"), service_name("Verifier")]
    reflection.enable_server_reflection([*served, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = server_credentials(config)
    bind = _address(config.host, config.port)
    port = server.add_secure_port(bind, credentials) if credentials is not None else server.add_insecure_port(bind)
    if config.metrics_port:
        try:
            metrics.serve(config.host, config.metrics_port)
        except OSError:
            # Nothing has started yet; the gRPC port bound above is let go, so a retry can bind it.
            await server.stop(None)
            raise
    batcher.start()
    await server.start()
    for name in ["", *served]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    monitor = None
    if config.triton is not None:
        monitor = asyncio.create_task(_follow_readiness(backend, health_servicer, ["", *served]))
    return RunningServer(
        server, health_servicer, batcher, executor, backend, metrics, _address(config.host, port), monitor
    )


async def _follow_readiness(backend: Backend, health_servicer: health.aio.HealthServicer, names: list[str]) -> None:
    """SERVING exactly while the backend's remote networks are ready, so the orchestrator routes around this
    server while Triton is down or a model is unloaded, and back once it returns."""
    serving = True
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(READINESS_POLL_SECONDS)
        # In a thread: the readiness calls block, and the event loop keeps serving meanwhile.
        ready = await loop.run_in_executor(None, backend.ready)
        if ready != serving:
            serving = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                await health_servicer.set(name, status)
            print(f"noisesearch-server: {'SERVING' if ready else 'NOT_SERVING'}: remote networks "
                  f"{'ready again' if ready else 'not ready'}", file=sys.stderr, flush=True)


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
        backend = build_backend(config)
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

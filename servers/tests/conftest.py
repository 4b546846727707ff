from __future__ import annotations

import grpc
import pytest

from noisesearch_server.backend import EvaluateRequest
from noisesearch_server.diffusion_backend import DiffusionBackend
from noisesearch_server.gmm import GaussianMixture, GmmConfig, GmmPopulation, gmm_verifiers
from noisesearch_server.lineage import Cancellation, Candidate, Condition, Lineage, NoiseRecipe, Perturbation, Renoise, Solve
from noisesearch_server.proto import load
from noisesearch_server.server import ServerConfig, start_server

SIGMA_MAX = 40.0
ALL_VERIFIERS = ("gmm-oracle", "gmm-classifier", "gmm-selfsup")


@pytest.fixture(scope="session")
def model() -> GaussianMixture:
    return GaussianMixture(GmmConfig())


def make_backend(model, cache_bytes: int = 1 << 20, max_batch: int = 64, **options) -> DiffusionBackend:
    """`model` may wrap the mixture (counting or failing calls); the verifiers always score the mixture."""
    mixture = getattr(model, "model", model)
    return DiffusionBackend(
        model,
        gmm_verifiers(mixture),
        max_batch=max_batch,
        max_concurrency=8,
        cache_bytes=cache_bytes,
        population=GmmPopulation(mixture),
        **options,
    )


class CountingModel:
    """Counts denoiser rows, so executed NFEs can be checked against what really ran."""

    def __init__(self, model):
        self.model = model
        self.spec = model.spec
        self.rows = 0

    def denoise(self, x, sigma, rows):
        self.rows += len(x)
        return self.model.denoise(x, sigma, rows)


def full_solve(solver: str = "heun", steps: int = 10) -> Solve:
    return Solve(SIGMA_MAX, 0.0, solver, steps)


def candidate(
    seed: int,
    ops: tuple = (full_solve(),),
    label: int | None = 3,
    guidance: float | None = None,
    perturbations: tuple[Perturbation, ...] = (),
    score_xpred: bool = False,
    base: bytes = b"",
) -> Candidate:
    return Candidate(
        id=f"c{seed}",
        lineage=Lineage(NoiseRecipe(seed, perturbations), ops),
        condition=Condition(class_label=label, guidance_scale=guidance),
        score_xpred=score_xpred,
        base=base,
    )


def path_lineage(seed: int) -> tuple:
    """Solve part-way, renoise, solve to 0: the shape of a search-over-paths candidate."""
    return (Solve(SIGMA_MAX, 1.0, "heun", 6), Renoise(1.0, 2.5, seed + 1000), Solve(2.5, 0.0, "heun", 4))


def evaluate_one(backend: DiffusionBackend, candidates, verifiers=ALL_VERIFIERS, return_samples=True, cancellation=None):
    request = EvaluateRequest("gmm", tuple(candidates), tuple(verifiers), return_samples, cancellation or Cancellation())
    response = backend.evaluate([request])[0]
    assert not isinstance(response, Exception), response
    return response


@pytest.fixture
async def running_server():
    running = await start_server(ServerConfig(port=0, batch_window_ms=2.0, cache_mb=1.0))
    yield running
    await running.stop(grace=0.5)


@pytest.fixture
async def channel(running_server):
    async with grpc.aio.insecure_channel(running_server.address) as channel:
        yield channel


@pytest.fixture
def pb():
    return load()[0]


@pytest.fixture
def denoiser(channel):
    return load()[1].DenoiserStub(channel)


@pytest.fixture
def verifier(channel):
    return load()[1].VerifierStub(channel)

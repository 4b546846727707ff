"""A simulated GPU model server (`--model sim`), for benchmarks and scale tests only.

It answers exactly as the embedded gmm does (the same backend computes every result, so scores, keys and NFEs
are bit-identical), but each engine run takes at least the wall time a GPU denoiser would: a fixed cost per
batch plus a cost per candidate. It makes up the difference by sleeping, not computing, so that many such
servers fit on a few cores and a benchmark measures the orchestration and the fleet, not this machine's CPUs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .backend import (
    Backend,
    Description,
    EvaluateRequest,
    EvaluateResponse,
    PopulationRequest,
    RequestError,
    ScoreRequest,
    ScoreResponse,
)
from .diffusion_backend import DiffusionBackend
from .population import PopulationResult


@dataclass(frozen=True)
class SimulatedCost:
    """The wall time of one engine run of a GPU denoiser: batch_ms + item_ms per candidate of the run."""

    batch_ms: float
    item_ms: float

    def seconds(self, candidates: int) -> float:
        return (self.batch_ms + self.item_ms * candidates) / 1000


class SimulatedBackend(Backend):
    """The gmm's backend at a GPU's pace: only `evaluate` (an engine run) is slowed; Describe, Score and
    Population are the gmm's own, as co-located verifiers and metrics are cheap next to the denoiser."""

    def __init__(self, inner: DiffusionBackend, cost: SimulatedCost) -> None:
        self.inner = inner
        self.cost = cost

    def describe(self) -> Description:
        return self.inner.describe()

    def check_request(self, request: EvaluateRequest) -> None:
        self.inner.check_request(request)

    def final_state_keys(self, request: EvaluateRequest) -> list[tuple[str, bytes]]:
        return self.inner.final_state_keys(request)

    def evaluate(self, requests: list[EvaluateRequest]) -> list[EvaluateResponse | RequestError]:
        started = time.monotonic()
        responses = self.inner.evaluate(requests)
        # Every candidate of the merged run occupies the modelled GPU, as a padded batch would.
        candidates = sum(len(request.candidates) for request in requests)
        slept = sleep_until(started + self.cost.seconds(candidates))
        # The sleep stands for denoising: each request is charged its candidates' share of it.
        return [
            response if isinstance(response, RequestError)
            else replace(response, denoise_seconds=response.denoise_seconds + slept * len(request.candidates) / candidates)
            for request, response in zip(requests, responses)
        ]

    def score(self, request: ScoreRequest) -> ScoreResponse:
        return self.inner.score(request)

    def population(self, request: PopulationRequest) -> PopulationResult:
        return self.inner.population(request)

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()


def sleep_until(deadline: float) -> float:
    """Sleeps until time.monotonic() reaches `deadline` (never less: the modelled time is a lower bound);
    returns the seconds slept."""
    start = now = time.monotonic()
    while now < deadline:
        time.sleep(deadline - now)
        now = time.monotonic()
    return now - start

"""What a backend is, in plain data: the servicers decode into these types and encode out of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .lineage import Cancellation, Candidate, Condition
from .population import PopulationResult


# The label of a row without a class condition, in the label arrays passed to models and verifiers.
UNCONDITIONAL = -1


@dataclass(frozen=True)
class RowCondition:
    """One candidate's condition, resolved: `guidance` is the request's scale or the model's default."""

    class_label: int | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    guidance: float = 0.0


class Rows:
    """The conditions of a batch's rows, as models and verifiers take them: numeric models read the label and
    guidance arrays, text models the prompts."""

    def __init__(self, conditions: Sequence[RowCondition]) -> None:
        self.conditions = tuple(conditions)
        self.labels = np.array(
            [UNCONDITIONAL if c.class_label is None else c.class_label for c in self.conditions], dtype=np.int64
        )
        self.guidance = np.array([c.guidance for c in self.conditions], dtype=np.float64)

    @classmethod
    def of_labels(cls, labels: Sequence[int], guidance: float = 1.0) -> Rows:
        return cls([RowCondition(None if label < 0 else int(label), guidance=guidance) for label in labels])

    def __len__(self) -> int:
        return len(self.conditions)

    def __getitem__(self, subset: Sequence[int] | np.ndarray) -> Rows:
        return Rows([self.conditions[i] for i in subset])


@dataclass(frozen=True)
class ModelSpec:
    name: str
    latent_shape: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    rho: float
    num_classes: int
    default_solver: str
    default_steps: int
    default_guidance_scale: float
    # Two models with the same identity produce the same trajectories: it keys the trajectory cache.
    identity: str
    # "ve": a state is x0 + sigma * n (sigma in [sigma_min, sigma_max]); "flow": (1 - sigma) * x0 + sigma * n
    # (rectified flow, sigma in [0, 1]). Renoising and ancestral steps differ between the two.
    process: str = "ve"
    # How a solve spaces its steps (schedules.py): "karras" (by rho) or "shifted" (sigma = s*l / (1 + (s-1)*l)
    # on a uniform grid of levels l, s = schedule_shift; s = 1 is uniform in sigma).
    schedule: str = "karras"
    schedule_shift: float = 1.0
    # A text-to-image model takes prompts (and negative prompts); a class model num_classes labels.
    takes_prompts: bool = False
    # The decoded sample, [3, H, W] for an image model; empty when the sample is the latent itself.
    image_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class VerifierSpec:
    name: str
    kind: str
    needs_condition: bool
    xpred_sigma: float
    description: str
    # What the condition it needs is: "class" or "prompt" ("" when it needs none).
    condition_kind: str = "class"


class Verifier(Protocol):
    spec: VerifierSpec

    def score(self, samples: Any, rows: Rows, probes: Any | None) -> np.ndarray:
        """One score per row of `samples` (what the model's decode gave: latents for a latent model, images for
        an image model); `probes`, for self-supervised verifiers only, are the decoded x-predictions."""
        ...


class DiffusionModel(Protocol):
    spec: ModelSpec

    def denoise(self, x: np.ndarray, sigma: float, rows: Rows) -> np.ndarray:
        """D(x, sigma) per row of the flattened states x: each row's result must not depend on the other rows."""
        ...


class ImageModel(DiffusionModel, Protocol):
    """A model whose samples are decoded into pictures before verifiers see them (spec.image_shape is set)."""

    def decode(self, samples: np.ndarray) -> Any:
        """Flattened clean latents -> a batch of images the verifiers take."""
        ...

    def stack_images(self, images: Sequence[Any]) -> Any: ...

    def encode_png(self, images: Any) -> list[bytes]: ...

    def decode_png(self, pngs: Sequence[bytes]) -> Any: ...


class ConfigError(ValueError):
    """Start-up configuration that cannot work; the message says how to fix it."""


class RequestError(Exception):
    """The whole call is bad; `code` is a gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Bounds a Population call (the reference is 20x the samples) to about a second on the engine thread.
MAX_POPULATION_SAMPLES = 10_000
MAX_SCORE_SAMPLES = 10_000


def too_many_candidates(count: int, max_batch: int) -> RequestError:
    return RequestError("INVALID_ARGUMENT", f"candidates: got {count}, more than max_batch {max_batch}; split the request")


def too_many_score_samples(count: int) -> RequestError:
    return RequestError("INVALID_ARGUMENT", f"samples: got {count}, more than {MAX_SCORE_SAMPLES}; split the request")


def too_many_population_samples(count: int) -> RequestError:
    return RequestError(
        "INVALID_ARGUMENT", f"samples: got {count}, more than {MAX_POPULATION_SAMPLES}; evaluate a subsample"
    )


@dataclass(frozen=True)
class CandidateError:
    code: str
    message: str


@dataclass(frozen=True)
class Description:
    model: ModelSpec
    solvers: tuple[str, ...]
    verifiers: tuple[VerifierSpec, ...]
    max_batch: int
    max_concurrency: int
    server_id: str


@dataclass(frozen=True)
class EvaluateRequest:
    model: str
    candidates: tuple[Candidate, ...]
    verifiers: tuple[str, ...]
    return_samples: bool = False
    cancellation: Cancellation = field(default_factory=Cancellation)


@dataclass
class CandidateResult:
    id: str
    scores: dict[str, float] = field(default_factory=dict)
    nfe_logical: int = 0
    nfe_executed: int = 0
    error: CandidateError | None = None
    sample: np.ndarray | None = None
    final_sigma: float = 0.0
    resumed_from_cache: bool = False
    # This candidate's share of each verifier's batched call, so merged requests split their cost fairly.
    verifier_seconds: dict[str, float] = field(default_factory=dict)
    # Empty until the candidate got that far: its final state, and its noise after its perturbations.
    state_key: bytes = b""
    noise_key: bytes = b""
    # The decoded sample as a PNG, for an image model asked for samples.
    image: bytes = b""


@dataclass(frozen=True)
class VerifierTiming:
    verifier: str
    calls: int
    seconds: float


@dataclass(frozen=True)
class EvaluateResponse:
    results: tuple[CandidateResult, ...]
    verifier_timings: tuple[VerifierTiming, ...]
    cache_hits: int
    # This request's share of the denoising time (solves and x-predictions, not verifiers) of the merged engine
    # run it was part of: what a search is charged for the denoiser, beside its verifier seconds.
    denoise_seconds: float = 0.0


@dataclass(frozen=True)
class Sample:
    values: np.ndarray
    shape: tuple[int, ...]
    condition: Condition | None
    xpred: np.ndarray
    # An image model's sample as a PNG (then `values` is empty).
    image: bytes = b""


@dataclass(frozen=True)
class ScoreRequest:
    verifiers: tuple[str, ...]
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class ScoreResponse:
    scores: tuple[dict[str, float], ...]
    verifier_timings: tuple[VerifierTiming, ...]


@dataclass(frozen=True)
class PopulationRequest:
    samples: tuple[Sample, ...]


class Backend(ABC):
    """Loaded once; then `evaluate` answers a batch of requests with one response (or error) each."""

    @abstractmethod
    def describe(self) -> Description: ...

    @abstractmethod
    def check_request(self, request: EvaluateRequest) -> None:
        """Raise RequestError when the call as a whole is bad; candidate problems are not checked here."""

    @abstractmethod
    def evaluate(self, requests: list[EvaluateRequest]) -> list[EvaluateResponse | RequestError]: ...

    @abstractmethod
    def final_state_keys(self, request: EvaluateRequest) -> list[tuple[str, bytes]]:
        """(id, key of the final state) of each candidate that passes validation: what fault injection
        decides by, so that a candidate is hit the same way in any request."""

    @abstractmethod
    def score(self, request: ScoreRequest) -> ScoreResponse: ...

    def ready(self) -> bool:
        """Whether the backend can serve now: always, once loaded, unless its networks are remote (Triton)."""
        return True

    def close(self) -> None:
        """Lets go of what the backend holds beyond this process (a connection to Triton); nothing by default."""

    @abstractmethod
    def population(self, request: PopulationRequest) -> PopulationResult:
        """Fréchet distance and Inception Score of the samples against the true distribution (population.py);
        raise RequestError for a bad request (INVALID_ARGUMENT naming the field) or an unsupported model."""


# How much of a string from a request an error message quotes: a status's message travels as a gRPC trailer,
# which clients refuse beyond 16 KiB (the client then sees RESOURCE_EXHAUSTED instead of the refusal).
QUOTED_CHARACTERS = 64


def quoted(text: str) -> str:
    """`text` as repr shows it, cut to QUOTED_CHARACTERS with its length said, for an error message."""
    if len(text) <= QUOTED_CHARACTERS:
        return repr(text)
    return f"{text[:QUOTED_CHARACTERS]!r}... ({len(text)} characters)"


def listed(values: Sequence, limit: int = 8) -> str:
    """A list from a request, for an error message: its first `limit` entries and its length."""
    if len(values) <= limit:
        return str(list(values))
    return f"[{', '.join(str(v) for v in values[:limit])}, ...] ({len(values)} entries)"


def describe_failure(failure: BaseException) -> str:
    """The cause of an unexpected failure, as it reaches the client."""
    return f"{type(failure).__name__}: {failure}"


def summarize_timings(results: list[CandidateResult]) -> tuple[VerifierTiming, ...]:
    """`calls` counts scored samples, so the number does not depend on how requests were merged."""
    calls: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for result in results:
        for name, spent in result.verifier_seconds.items():
            calls[name] = calls.get(name, 0) + 1
            seconds[name] = seconds.get(name, 0.0) + spent
    return tuple(VerifierTiming(name, calls[name], seconds[name]) for name in calls)

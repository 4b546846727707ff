"""A Backend over any DiffusionModel and its co-located verifiers: request checks, batching, scoring."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Protocol

import numpy as np

from .backend import (
    MAX_POPULATION_SAMPLES,
    MAX_SCORE_SAMPLES,
    UNCONDITIONAL,
    Backend,
    CandidateResult,
    ConfigError,
    Description,
    DiffusionModel,
    EvaluateRequest,
    EvaluateResponse,
    ModelSpec,
    PopulationRequest,
    RequestError,
    RowCondition,
    Rows,
    Sample,
    ScoreRequest,
    ScoreResponse,
    Verifier,
    VerifierTiming,
    summarize_timings,
    listed,
    quoted,
    too_many_candidates,
    too_many_population_samples,
    too_many_score_samples,
)
from .engine import SOLVERS, Engine, TrajectoryCache
from .faults import FaultPlan
from .lineage import Candidate, Job, Solve, ops_nfe
from .population import PopulationModel, PopulationResult, population_metrics
from .validation import validate_candidate


class RemoteNetworks(Protocol):
    """Networks served by another process (a Triton server): whether they answer now, and letting go of them."""

    def ready(self) -> bool: ...

    def close(self) -> None: ...


DEFAULT_MAX_REQUEST_NFE = 1_000_000


class DiffusionBackend(Backend):
    def __init__(
        self,
        model: DiffusionModel,
        verifiers: list[Verifier],
        *,
        max_batch: int,
        max_concurrency: int,
        cache_bytes: int,
        population: PopulationModel | None = None,
        image_metrics: Any | None = None,
        max_request_nfe: int = DEFAULT_MAX_REQUEST_NFE,
        faults: FaultPlan | None = None,
        remote: RemoteNetworks | None = None,
    ) -> None:
        """remote: the connection to networks served elsewhere (Triton); None when they are in-process."""
        if max_request_nfe < 1:
            raise ConfigError(f"max_request_nfe must be >= 1, got {max_request_nfe}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be >= 0, got {cache_bytes}")
        names = [v.spec.name for v in verifiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"verifier names must be unique, got {names}")
        if faults is not None:
            faults.check_verifiers(names)
        probe_sigmas = {v.spec.xpred_sigma for v in verifiers if v.spec.kind == "self-supervised"}
        if len(probe_sigmas) > 1:
            raise ConfigError(f"self-supervised verifiers must share one xpred_sigma, got {sorted(probe_sigmas)}")
        self.model = model
        self._remote = remote
        self.population_model = population
        # ImagePopulationMetrics (torchmodels/image_metrics.py) for an image model: FID, IS, CLIP-FID.
        self.image_metrics = image_metrics
        self.verifiers = {v.spec.name: v for v in verifiers}
        self.max_batch = max_batch
        self.max_concurrency = max_concurrency
        self.max_request_nfe = max_request_nfe
        self.server_id = str(uuid.uuid4())
        self.cache = TrajectoryCache(cache_bytes)
        self.engine = Engine(model, self.verifiers, self.cache, probe_sigmas.pop() if probe_sigmas else None, faults)

    def ready(self) -> bool:
        return self._remote is None or self._remote.ready()

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()

    def describe(self) -> Description:
        return Description(
            model=self.model.spec,
            solvers=SOLVERS,
            verifiers=tuple(v.spec for v in self.verifiers.values()),
            max_batch=self.max_batch,
            max_concurrency=self.max_concurrency,
            server_id=self.server_id,
        )

    def _hosted(self) -> str:
        return ", ".join(self.verifiers)

    def _check_verifiers(self, names: tuple[str, ...]) -> None:
        for i, name in enumerate(names):
            if name not in self.verifiers:
                raise RequestError(
                    "INVALID_ARGUMENT", f"verifiers[{i}]: unknown verifier {quoted(name)}; this server hosts {self._hosted()}"
                )

    def check_request(self, request: EvaluateRequest) -> None:
        model = self.model.spec.name
        if request.model and request.model != model:
            raise RequestError("NOT_FOUND", f"model: unknown model {quoted(request.model)}; this server hosts {model!r}")
        if not request.candidates:
            raise RequestError("INVALID_ARGUMENT", f"candidates: empty; send 1 to {self.max_batch} candidates")
        if len(request.candidates) > self.max_batch:
            raise too_many_candidates(len(request.candidates), self.max_batch)
        self._check_verifiers(request.verifiers)
        cost = sum(_logical_nfe_bound(candidate) for candidate in request.candidates)
        if cost > self.max_request_nfe:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"candidates: the request costs up to {cost} logical NFEs, more than this server's limit "
                f"{self.max_request_nfe} (--max-request-nfe); split it into smaller requests",
            )

    def _validate(self, request: EvaluateRequest) -> list[Job | CandidateError]:
        verifier_specs = tuple(self.verifiers[name].spec for name in dict.fromkeys(request.verifiers))
        return [
            validate_candidate(
                candidate, i, self.model.spec, SOLVERS, verifier_specs, request.return_samples, request.cancellation
            )
            for i, candidate in enumerate(request.candidates)
        ]

    def final_state_keys(self, request: EvaluateRequest) -> list[tuple[str, bytes]]:
        return [
            (job.candidate_id, self.engine.final_key(job)) for job in self._validate(request) if isinstance(job, Job)
        ]

    def evaluate(self, requests: list[EvaluateRequest]) -> list[EvaluateResponse | RequestError]:
        """Runs the valid candidates of all requests as one engine batch."""
        request_results: list[list[CandidateResult | None] | RequestError] = []
        jobs: list[Job] = []
        slots: list[tuple[int, int]] = []
        for r, request in enumerate(requests):
            try:
                self.check_request(request)
            except RequestError as error:
                request_results.append(error)
                continue
            results: list[CandidateResult | None] = []
            for i, (candidate, outcome) in enumerate(zip(request.candidates, self._validate(request))):
                if isinstance(outcome, Job):
                    jobs.append(outcome)
                    slots.append((r, i))
                    results.append(None)
                else:
                    results.append(CandidateResult(id=candidate.id, error=outcome))
            request_results.append(results)

        denoising_before = self._denoising_seconds()
        try:
            finished = self.engine.run(jobs)
        except RequestError as error:
            # A call the engine depends on failed as a whole (a Triton server down): every request that had
            # candidates to run fails with it, retryably or not as its code says; none of its candidates is failed.
            for r in {r for r, _ in slots}:
                request_results[r] = error
            finished = []
        for (r, i), result in zip(slots, finished):
            request_results[r][i] = result
        denoise_shares = _denoise_shares(
            self._denoising_seconds() - denoising_before, slots, finished, len(request_results)
        )

        responses: list[EvaluateResponse | RequestError] = []
        for outcome, denoise_seconds in zip(request_results, denoise_shares):
            if isinstance(outcome, RequestError):
                responses.append(outcome)
                continue
            results = [result for result in outcome if result is not None]
            responses.append(
                EvaluateResponse(
                    results=tuple(results),
                    verifier_timings=summarize_timings(results),
                    cache_hits=sum(result.resumed_from_cache for result in results),
                    denoise_seconds=denoise_seconds,
                )
            )
        return responses

    def _denoising_seconds(self) -> float:
        """The engine's denoising time so far: its solves (renoising included) and x-predictions; evaluate runs
        on the engine thread, so the difference around one run is that run's."""
        compute = self.engine.stats.compute_seconds
        return compute["solve"] + compute["xpred"]

    def score(self, request: ScoreRequest) -> ScoreResponse:
        self._check_verifiers(request.verifiers)
        spec = self.model.spec
        names = list(dict.fromkeys(request.verifiers))
        size = math.prod(spec.latent_shape)
        needs_condition = [n for n in names if self.verifiers[n].spec.needs_condition]
        needs_xpred = [n for n in names if self.verifiers[n].spec.kind == "self-supervised"]
        if len(request.samples) > MAX_SCORE_SAMPLES:
            raise too_many_score_samples(len(request.samples))
        if needs_xpred and spec.image_shape:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"verifiers: {needs_xpred[0]!r} compares a sample with its x-prediction, which Score cannot carry for "
                f"an image model; score it within Evaluate",
            )
        conditions = []
        for i, sample in enumerate(request.samples):
            path = f"samples[{i}]"
            if spec.image_shape:
                if not sample.image:
                    raise RequestError(
                        "INVALID_ARGUMENT", f"{path}.image: empty; this image model scores the PNG a CandidateResult's image gave"
                    )
            else:
                _check_sample_values(path, sample, spec)
            if needs_xpred:
                _check_values(f"{path}.xpred", sample.xpred, size, f" (verifier {needs_xpred[0]!r} needs it)")
            needs = f"verifier {needs_condition[0]!r} needs a condition" if needs_condition else None
            conditions.append(_sample_condition(path, sample, spec, needs))

        scores: list[dict[str, float]] = [{} for _ in request.samples]
        timings = []
        if request.samples:
            values = self._sample_values(request.samples)
            rows = Rows(conditions)
            for name in names:
                verifier = self.verifiers[name]
                xpreds = (
                    np.stack([s.xpred.astype(np.float64) for s in request.samples])
                    if verifier.spec.kind == "self-supervised"
                    else None
                )
                started = time.perf_counter()
                result = np.asarray(verifier.score(values, rows, xpreds), dtype=np.float64)
                spent = time.perf_counter() - started
                timings.append(VerifierTiming(name, len(request.samples), spent))
                # Score runs on the engine thread too: its verifier time is the engine's verify time.
                self.engine.stats.compute_seconds["verify"] += spent
                for i, score in enumerate(result):
                    if not np.isfinite(score):
                        raise RequestError(
                            "INTERNAL", f"samples[{i}]: verifier {name!r} gave a non-finite score ({score})"
                        )
                    scores[i][name] = float(score)
        return ScoreResponse(scores=tuple(scores), verifier_timings=tuple(timings))

    def _sample_values(self, samples: tuple[Sample, ...]) -> Any:
        """What verifiers and population metrics take: latents, or the pictures an image model's PNGs hold."""
        spec = self.model.spec
        if not spec.image_shape:
            size = math.prod(spec.latent_shape)
            return np.stack([s.values.astype(np.float64).reshape(size) for s in samples])
        images = []
        for i, sample in enumerate(samples):
            try:
                images.extend(self.model.decode_png([sample.image]))
            except ValueError as error:
                raise RequestError("INVALID_ARGUMENT", f"samples[{i}].image: {error}") from None
        return self.model.stack_images(images)

    def population(self, request: PopulationRequest) -> PopulationResult:
        if self.model.spec.image_shape:
            return self._image_population(request)
        if self.population_model is None:
            raise RequestError("UNIMPLEMENTED", f"population metrics: model {self.model.spec.name!r} has no reference")
        spec = self.model.spec
        if not request.samples:
            raise RequestError(
                "INVALID_ARGUMENT", f"samples: empty; send 1 to {MAX_POPULATION_SAMPLES} samples (2+ for a covariance)"
            )
        if len(request.samples) > MAX_POPULATION_SAMPLES:
            raise too_many_population_samples(len(request.samples))
        labels = []
        for i, sample in enumerate(request.samples):
            path = f"samples[{i}]"
            _check_sample_values(path, sample, spec)
            label = _sample_label(path, sample, spec, None)
            labels.append(UNCONDITIONAL if label is None else label)
        size = math.prod(spec.latent_shape)
        values = np.stack([s.values.astype(np.float64).reshape(size) for s in request.samples])
        result = population_metrics(self.population_model, values, np.array(labels))
        if not (math.isfinite(result.frechet_distance) and math.isfinite(result.inception_score)):
            raise RequestError("INTERNAL", f"population metrics are not finite: {result}")
        return result

    def _image_population(self, request: PopulationRequest) -> PopulationResult:
        metrics = self.image_metrics
        if metrics is None or metrics.fid_reference is None:
            raise RequestError(
                "UNIMPLEMENTED",
                f"population metrics: this {self.model.spec.name!r} server has no FID reference; start it with "
                f"--fid-inception FILE --fid-reference NPZ (and --clip-fid DIR --clip-fid-reference NPZ for CLIP-FID)",
            )
        if not 2 <= len(request.samples) <= MAX_POPULATION_SAMPLES:
            raise RequestError(
                "INVALID_ARGUMENT", f"samples: got {len(request.samples)}; send 2 to {MAX_POPULATION_SAMPLES} pictures"
            )
        for i, sample in enumerate(request.samples):
            if not sample.image:
                raise RequestError("INVALID_ARGUMENT", f"samples[{i}].image: empty; send the PNG a CandidateResult's image gave")
        computed = metrics.compute(self._sample_values(request.samples))
        result = PopulationResult(
            frechet_distance=computed["fid"],
            inception_score=computed["is"],
            samples=computed["samples"],
            reference_samples=computed["reference_samples"] or 0,
            feature_dim=computed["feature_dim"],
            clip_frechet_distance=computed.get("clip_fid"),
        )
        if not (math.isfinite(result.frechet_distance) and math.isfinite(result.inception_score)):
            raise RequestError("INTERNAL", f"population metrics are not finite: {result}")
        return result


def _denoise_shares(
    seconds: float, slots: list[tuple[int, int]], finished: list[CandidateResult], requests: int
) -> list[float]:
    """Splits one merged run's denoising time between its requests by the NFEs each executed in it, so a
    request served from the cache costs ~0; by candidates run when none executed (all cache hits, whose
    small cost of resuming is still someone's)."""
    executed = [0] * requests
    ran = [0] * requests
    for (r, _), result in zip(slots, finished):
        executed[r] += result.nfe_executed
        ran[r] += 1
    weights = executed if sum(executed) > 0 else ran
    total = sum(weights)
    return [seconds * weight / total if total else 0.0 for weight in weights]


def _logical_nfe_bound(candidate: Candidate) -> int:
    """What the candidate would cost if valid; a bound, since a base's sigma is not known before the run."""
    ops = candidate.lineage.ops
    ends_above_zero = not ops or ops[-1] is None or ops[-1].sigma_to > 0
    xpred = 1 if candidate.score_xpred and ends_above_zero else 0
    return ops_nfe(tuple(op for op in ops if isinstance(op, Solve))) + xpred


def _check_sample_values(path: str, sample: Sample, spec: ModelSpec) -> None:
    if sample.shape != spec.latent_shape:
        raise RequestError("INVALID_ARGUMENT", f"{path}.shape: got {listed(sample.shape)}, want {list(spec.latent_shape)}")
    _check_values(f"{path}.values", sample.values, math.prod(spec.latent_shape))


def _sample_condition(path: str, sample: Sample, spec: ModelSpec, needs_condition: str | None) -> RowCondition:
    """The sample's condition; `needs_condition` says why a missing one is an error."""
    condition = sample.condition
    if spec.takes_prompts:
        if condition is not None and condition.class_label is not None:
            raise RequestError("INVALID_ARGUMENT", f"{path}.condition.class_label: this model takes prompts, not classes")
        if condition is not None and condition.prompt is not None:
            return RowCondition(prompt=condition.prompt, negative_prompt=condition.negative_prompt)
        if needs_condition:
            raise RequestError("INVALID_ARGUMENT", f"{path}.condition: {needs_condition}; set condition.prompt")
        return RowCondition()
    return RowCondition(class_label=_sample_label(path, sample, spec, needs_condition))


def _sample_label(path: str, sample: Sample, spec: ModelSpec, needs_condition: str | None) -> int | None:
    """The sample's class, or None; `needs_condition` says why a missing class is an error."""
    condition = sample.condition
    if condition is not None and condition.prompt is not None:
        raise RequestError("INVALID_ARGUMENT", f"{path}.condition.prompt: this model takes class labels, not prompts")
    if condition is not None and condition.class_label is not None:
        label = condition.class_label
        if not 0 <= label < spec.num_classes:
            raise RequestError(
                "INVALID_ARGUMENT",
                f"{path}.condition.class_label: got {label}; want a class in [0, {spec.num_classes})",
            )
        return label
    if needs_condition:
        raise RequestError("INVALID_ARGUMENT", f"{path}.condition: {needs_condition}; set condition.class_label")
    return None


def _check_values(path: str, values: np.ndarray, size: int, why: str = "") -> None:
    if len(values) != size:
        raise RequestError("INVALID_ARGUMENT", f"{path}: got {len(values)} values, want {size}{why}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise RequestError("INVALID_ARGUMENT", f"{path}[{bad[0]}]: got {values[bad[0]]}; want finite values")

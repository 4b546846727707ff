"""Protobuf messages <-> the backend's plain dataclasses; nothing here computes or validates, except that a
request with more samples than any backend takes is refused before they are decoded (decoding a million empty
samples would take a minute and a gigabyte)."""

from __future__ import annotations

import numpy as np

from .backend import (
    MAX_POPULATION_SAMPLES,
    MAX_SCORE_SAMPLES,
    Description,
    EvaluateRequest,
    EvaluateResponse,
    PopulationRequest,
    Sample,
    ScoreRequest,
    ScoreResponse,
    VerifierSpec,
    too_many_population_samples,
    too_many_score_samples,
)
from .population import PopulationResult
from .lineage import Cancellation, Candidate, Condition, Lineage, NoiseRecipe, Op, Perturbation, Renoise, Solve
from .proto import load

pb, _ = load()


def decode_condition(message) -> Condition:
    kind = message.WhichOneof("kind")
    return Condition(
        class_label=message.class_label if kind == "class_label" else None,
        prompt=message.prompt if kind == "prompt" else None,
        guidance_scale=message.guidance_scale if message.HasField("guidance_scale") else None,
        negative_prompt=message.negative_prompt,
    )


def decode_op(message) -> Op | None:
    kind = message.WhichOneof("op")
    if kind == "solve":
        s = message.solve
        return Solve(s.sigma_from, s.sigma_to, s.solver, s.steps, s.schedule, s.seed)
    if kind == "renoise":
        r = message.renoise
        return Renoise(r.sigma_from, r.sigma_to, r.seed)
    return None


def decode_lineage(message) -> Lineage:
    noise = None
    if message.HasField("noise"):
        noise = NoiseRecipe(
            seed=message.noise.seed,
            perturbations=tuple(Perturbation(p.seed, p.cosine) for p in message.noise.perturbations),
        )
    return Lineage(noise=noise, ops=tuple(decode_op(op) for op in message.ops))


def decode_candidate(message) -> Candidate:
    return Candidate(
        id=message.id,
        lineage=decode_lineage(message.lineage),
        condition=decode_condition(message.condition),
        score_xpred=message.score_xpred,
        base=message.base,
    )


def decode_evaluate_request(message, cancellation: Cancellation) -> EvaluateRequest:
    return EvaluateRequest(
        model=message.model,
        candidates=tuple(decode_candidate(c) for c in message.candidates),
        verifiers=tuple(message.verifiers),
        return_samples=message.return_samples,
        cancellation=cancellation,
    )


def decode_sample(message) -> Sample:
    return Sample(
        values=np.array(message.values, dtype=np.float32),
        shape=tuple(message.shape),
        condition=decode_condition(message.condition) if message.HasField("condition") else None,
        xpred=np.array(message.xpred, dtype=np.float32),
        image=message.image,
    )


def decode_score_request(message) -> ScoreRequest:
    if len(message.samples) > MAX_SCORE_SAMPLES:
        raise too_many_score_samples(len(message.samples))
    return ScoreRequest(verifiers=tuple(message.verifiers), samples=tuple(decode_sample(s) for s in message.samples))


def decode_population_request(message) -> PopulationRequest:
    if len(message.samples) > MAX_POPULATION_SAMPLES:
        raise too_many_population_samples(len(message.samples))
    return PopulationRequest(samples=tuple(decode_sample(s) for s in message.samples))


def encode_verifier_info(spec: VerifierSpec):
    return pb.VerifierInfo(
        name=spec.name,
        kind=spec.kind,
        needs_condition=spec.needs_condition,
        xpred_sigma=spec.xpred_sigma,
        description=spec.description,
    )


def encode_description(description: Description):
    model = description.model
    return pb.ModelDescription(
        model=model.name,
        latent_shape=list(model.latent_shape),
        sigma_min=model.sigma_min,
        sigma_max=model.sigma_max,
        solvers=[pb.SolverInfo(name=name) for name in description.solvers],
        max_batch=description.max_batch,
        max_concurrency=description.max_concurrency,
        verifiers=[encode_verifier_info(v) for v in description.verifiers],
        default_solver=model.default_solver,
        default_steps=model.default_steps,
        num_classes=model.num_classes,
        default_guidance_scale=model.default_guidance_scale,
        server_id=description.server_id,
        rho=model.rho,
        process=model.process,
        schedule=model.schedule,
        schedule_shift=model.schedule_shift,
        takes_prompts=model.takes_prompts,
        image_shape=list(model.image_shape),
    )


def encode_verifier_description(description: Description):
    return pb.VerifierDescription(
        verifiers=[encode_verifier_info(v) for v in description.verifiers],
        sample_shape=list(description.model.latent_shape),
    )


def _encode_timings(timings) -> list:
    return [pb.VerifierTiming(verifier=t.verifier, calls=t.calls, seconds=t.seconds) for t in timings]


def encode_evaluate_response(response: EvaluateResponse, server_seconds: float, server_id: str):
    results = []
    for result in response.results:
        message = pb.CandidateResult(
            id=result.id,
            scores=result.scores,
            nfe_logical=result.nfe_logical,
            nfe_executed=result.nfe_executed,
            final_sigma=result.final_sigma,
            state_key=result.state_key,
            noise_key=result.noise_key,
            image=result.image,
        )
        if result.error is not None:
            message.error.code = result.error.code
            message.error.message = result.error.message
        if result.sample is not None:
            message.sample.extend(result.sample.astype(np.float32).tolist())
        results.append(message)
    return pb.EvaluateResponse(
        results=results,
        verifier_timings=_encode_timings(response.verifier_timings),
        server_seconds=server_seconds,
        server_id=server_id,
        cache_hits=response.cache_hits,
        denoise_seconds=response.denoise_seconds,
    )


def encode_score_response(response: ScoreResponse):
    return pb.ScoreResponse(
        results=[pb.SampleScores(scores=scores) for scores in response.scores],
        verifier_timings=_encode_timings(response.verifier_timings),
    )


def encode_population_response(result: PopulationResult):
    message = pb.PopulationResponse(
        frechet_distance=result.frechet_distance,
        inception_score=result.inception_score,
        samples=result.samples,
        reference_samples=result.reference_samples,
        feature_dim=result.feature_dim,
    )
    if result.clip_frechet_distance is not None:
        message.clip_frechet_distance = result.clip_frechet_distance
    return message

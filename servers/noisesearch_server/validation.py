"""Candidate-level validation: each message names the field path and says what would be right."""

from __future__ import annotations

import math

from .backend import CandidateError, ModelSpec, VerifierSpec, quoted
from .lineage import KEY_BYTES, Cancellation, Candidate, Job, Op, Renoise, Solve

SIGMA_RELATIVE_TOLERANCE = 1e-9
# Bounds on what one candidate may ask for, so that one request cannot occupy the engine for hours.
MAX_STEPS = 10_000
MAX_OPS = 100_000
MAX_PERTURBATIONS = 100_000
# Ops and perturbations of all of a request's candidates together, counted before they are decoded: decoding
# runs on the event loop at about 50,000 ops a second, so 64 candidates at MAX_OPS each (a 190 MB request)
# would stop the server answering anything, health checks included, for two minutes.
MAX_REQUEST_LINEAGE_ITEMS = 100_000
# Solvers that draw noise of their own; the others are deterministic and take seed 0.
SEEDED_SOLVERS = ("euler_ancestral",)


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


def same_sigma(a: float, b: float) -> bool:
    return abs(a - b) <= SIGMA_RELATIVE_TOLERANCE * max(abs(a), abs(b))


def _check_sigma(path: str, sigma: float, spec: ModelSpec) -> None:
    if not math.isfinite(sigma) or sigma < 0 or (sigma > spec.sigma_max and not same_sigma(sigma, spec.sigma_max)):
        raise _Invalid(path, f"got {sigma!r}; want a sigma in [0, {spec.sigma_max!r}]")
    if 0 < sigma < spec.sigma_min:
        raise _Invalid(path, f"got {sigma!r}; want 0 or a sigma >= sigma_min {spec.sigma_min!r}")


def _check_op(path: str, op: Op | None, spec: ModelSpec, solvers: tuple[str, ...]) -> Op:
    if op is None:
        raise _Invalid(path, "empty op; set solve or renoise")
    kind = "solve" if isinstance(op, Solve) else "renoise"
    _check_sigma(f"{path}.{kind}.sigma_from", op.sigma_from, spec)
    _check_sigma(f"{path}.{kind}.sigma_to", op.sigma_to, spec)
    if isinstance(op, Renoise):
        if op.sigma_to <= op.sigma_from:
            raise _Invalid(
                f"{path}.renoise.sigma_to",
                f"got {op.sigma_to!r} <= sigma_from {op.sigma_from!r}; renoising adds noise, want sigma_to > sigma_from",
            )
        return op
    if op.sigma_to >= op.sigma_from:
        raise _Invalid(
            f"{path}.solve.sigma_to",
            f"got {op.sigma_to!r} >= sigma_from {op.sigma_from!r}; a solve removes noise, want sigma_to < sigma_from",
        )
    if op.solver not in solvers:
        raise _Invalid(f"{path}.solve.solver", f"unknown solver {quoted(op.solver)}; want one of {', '.join(solvers)}")
    if not 1 <= op.steps <= MAX_STEPS:
        raise _Invalid(f"{path}.solve.steps", f"got {op.steps}; want 1 to {MAX_STEPS} steps")
    if op.schedule not in ("", spec.schedule):
        raise _Invalid(
            f"{path}.solve.schedule",
            f"got {quoted(op.schedule)}; this model steps on the {spec.schedule!r} schedule: want {spec.schedule!r} or empty",
        )
    if op.seed != 0 and op.solver not in SEEDED_SOLVERS:
        raise _Invalid(
            f"{path}.solve.seed",
            f"got {op.seed}; solver {op.solver!r} draws no noise, want 0 "
            f"(only {', '.join(SEEDED_SOLVERS)} takes a seed)",
        )
    return Solve(op.sigma_from, op.sigma_to, op.solver, op.steps, spec.schedule, op.seed)


def _check_ops(
    path: str, ops: tuple[Op | None, ...], spec: ModelSpec, solvers: tuple[str, ...], based: bool
) -> tuple[Op, ...]:
    """Ops must chain; a based candidate's first op is checked against its base's sigma once the base is found."""
    if len(ops) > MAX_OPS:
        raise _Invalid(path, f"got {len(ops)} ops; want at most {MAX_OPS} (continue from a base to go further)")
    checked: list[Op] = []
    expected_from, expected_what = spec.sigma_max, "the model's sigma_max"
    for j, op in enumerate(ops):
        op_path = f"{path}[{j}]"
        valid = _check_op(op_path, op, spec, solvers)
        if (j > 0 or not based) and not same_sigma(valid.sigma_from, expected_from):
            kind = "solve" if isinstance(valid, Solve) else "renoise"
            raise _Invalid(
                f"{op_path}.{kind}.sigma_from",
                f"got {valid.sigma_from!r}; want {expected_from!r} ({expected_what}): ops must chain",
            )
        checked.append(valid)
        expected_from, expected_what = valid.sigma_to, f"ops[{j}]'s sigma_to"
    return tuple(checked)


def _check_condition(
    path: str, candidate: Candidate, spec: ModelSpec, verifiers: tuple[VerifierSpec, ...]
) -> tuple[int | None, str | None, float]:
    condition = candidate.condition
    if condition.prompt is not None and not spec.takes_prompts:
        want = (
            f"it is class-conditional: set condition.class_label in [0, {spec.num_classes}) instead"
            if spec.num_classes
            else "leave the condition unset"
        )
        raise _Invalid(f"{path}.prompt", f"this model takes no text prompt; {want}")
    if condition.negative_prompt and condition.prompt is None:
        raise _Invalid(f"{path}.negative_prompt", "a negative prompt needs a prompt; set condition.prompt too")
    if condition.class_label is not None and spec.takes_prompts:
        raise _Invalid(
            f"{path}.class_label", f"got {condition.class_label}; this text-to-image model takes prompts, not classes"
        )
    if condition.class_label is not None and not 0 <= condition.class_label < spec.num_classes:
        want = f"want a class in [0, {spec.num_classes})" if spec.num_classes else "this model has no classes"
        raise _Invalid(f"{path}.class_label", f"got {condition.class_label}; {want}")
    guidance = condition.guidance_scale
    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise _Invalid(
            f"{path}.guidance_scale",
            f"got {guidance!r}; want a finite scale >= 0 (0: unconditional; unset: the default "
            f"{spec.default_guidance_scale!r})",
        )
    if condition.class_label is None and condition.prompt is None:
        for verifier in verifiers:
            if verifier.needs_condition:
                field = "prompt" if spec.takes_prompts else "class_label"
                raise _Invalid(path, f"verifier {verifier.name!r} needs a condition; set condition.{field}")
    return condition.class_label, condition.prompt, spec.default_guidance_scale if guidance is None else guidance


def validate_candidate(
    candidate: Candidate,
    index: int,
    spec: ModelSpec,
    solvers: tuple[str, ...],
    verifiers: tuple[VerifierSpec, ...],
    return_sample: bool,
    cancellation: Cancellation,
) -> Job | CandidateError:
    path = f"candidates[{index}]"
    based = bool(candidate.base)
    try:
        if based and len(candidate.base) != KEY_BYTES:
            raise _Invalid(
                f"{path}.base",
                f"got {len(candidate.base)} bytes; want a {KEY_BYTES}-byte state_key or noise_key this server returned",
            )
        noise = candidate.lineage.noise
        if noise is None and not based:
            raise _Invalid(f"{path}.lineage.noise", "missing; set a noise recipe {seed, perturbations}")
        perturbations = noise.perturbations if noise is not None else ()
        if len(perturbations) > MAX_PERTURBATIONS:
            raise _Invalid(
                f"{path}.lineage.noise.perturbations",
                f"got {len(perturbations)}; want at most {MAX_PERTURBATIONS} "
                f"(continue from a base noise to go further)",
            )
        for j, perturbation in enumerate(perturbations):
            if not (math.isfinite(perturbation.cosine) and -1 <= perturbation.cosine <= 1):
                raise _Invalid(
                    f"{path}.lineage.noise.perturbations[{j}].cosine",
                    f"got {perturbation.cosine!r}; want a cosine in [-1, 1]",
                )
        ops = _check_ops(f"{path}.lineage.ops", candidate.lineage.ops, spec, solvers, based)
        class_label, prompt, guidance = _check_condition(f"{path}.condition", candidate, spec, verifiers)
    except _Invalid as invalid:
        return CandidateError("INVALID_ARGUMENT", str(invalid))
    return Job(
        index=index,
        candidate_id=candidate.id,
        base=candidate.base if based else None,
        noise_seed=None if based else noise.seed,
        perturbations=perturbations,
        ops=ops,
        class_label=class_label,
        guidance=guidance,
        score_xpred=candidate.score_xpred,
        verifiers=tuple(v.name for v in verifiers),
        return_sample=return_sample,
        cancellation=cancellation,
        prompt=prompt,
        negative_prompt=candidate.condition.negative_prompt,
    )

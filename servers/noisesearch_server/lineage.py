"""Plain data for candidates and lineages, their canonical hashes and NFE counts (no gRPC here)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Perturbation:
    seed: int
    cosine: float


@dataclass(frozen=True)
class NoiseRecipe:
    seed: int
    perturbations: tuple[Perturbation, ...] = ()


@dataclass(frozen=True)
class Solve:
    sigma_from: float
    sigma_to: float
    solver: str
    steps: int
    schedule: str = "karras"


@dataclass(frozen=True)
class Renoise:
    sigma_from: float
    sigma_to: float
    seed: int


Op = Solve | Renoise


@dataclass(frozen=True)
class Lineage:
    """`noise` is None and an op is None where the request left them unset; validation reports those."""

    noise: NoiseRecipe | None
    ops: tuple[Op | None, ...] = ()


@dataclass(frozen=True)
class Condition:
    class_label: int | None = None
    prompt: str | None = None
    guidance_scale: float = 0.0


@dataclass(frozen=True)
class Candidate:
    id: str
    lineage: Lineage
    condition: Condition = Condition()
    score_xpred: bool = False


def solve_nfe(op: Solve) -> int:
    if op.solver == "euler":
        return op.steps
    # Heun's last step to sigma = 0 has no correction: the derivative there is undefined.
    return 2 * op.steps - (1 if op.sigma_to == 0 else 0)


def lineage_nfe(ops: tuple[Op, ...], score_xpred: bool) -> int:
    nfe = sum(solve_nfe(op) for op in ops if isinstance(op, Solve))
    return nfe + (1 if needs_xpred_eval(ops, score_xpred) else 0)


def needs_xpred_eval(ops: tuple[Op, ...], score_xpred: bool) -> bool:
    return score_xpred and (not ops or ops[-1].sigma_to > 0)


def _float_bytes(value: float) -> bytes:
    return struct.pack("<d", value)


def _uint_bytes(value: int) -> bytes:
    return struct.pack("<Q", value)


def _text_bytes(value: str) -> bytes:
    encoded = value.encode()
    return _uint_bytes(len(encoded)) + encoded


def root_key(model_identity: str, class_label: int | None, guidance: float, noise: NoiseRecipe) -> bytes:
    """Hash of everything that fixes a trajectory before its first op."""
    parts = [_text_bytes(model_identity)]
    parts.append(b"u" if class_label is None else b"c" + _uint_bytes(class_label) + _float_bytes(guidance))
    parts.append(_uint_bytes(noise.seed) + _uint_bytes(len(noise.perturbations)))
    parts.extend(_uint_bytes(p.seed) + _float_bytes(p.cosine) for p in noise.perturbations)
    return hashlib.sha256(b"".join(parts)).digest()


def extend_key(prefix_key: bytes, op: Op) -> bytes:
    """Chained so that the key of every prefix of a lineage costs one hash each."""
    if isinstance(op, Solve):
        encoded = (
            b"s" + _float_bytes(op.sigma_from) + _float_bytes(op.sigma_to)
            + _text_bytes(op.solver) + _uint_bytes(op.steps) + _text_bytes(op.schedule)
        )
    else:
        encoded = b"r" + _float_bytes(op.sigma_from) + _float_bytes(op.sigma_to) + _uint_bytes(op.seed)
    return hashlib.sha256(prefix_key + encoded).digest()


def prefix_keys(root: bytes, ops: tuple[Op, ...]) -> list[bytes]:
    """keys[j] identifies the state after ops[:j + 1]."""
    keys = []
    key = root
    for op in ops:
        key = extend_key(key, op)
        keys.append(key)
    return keys


@dataclass(frozen=True)
class Job:
    """A validated candidate, resolved against the model: what the engine runs."""

    index: int
    candidate_id: str
    noise: NoiseRecipe
    ops: tuple[Op, ...]
    class_label: int | None
    guidance: float
    score_xpred: bool
    verifiers: tuple[str, ...]
    return_sample: bool

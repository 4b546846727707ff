"""Plain data for candidates and lineages, their canonical hashes and NFE counts (no gRPC here)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

KEY_BYTES = 16


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
    # Empty: the model's own schedule (validation fills it in before any key is computed).
    schedule: str = ""
    seed: int = 0


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
    # None: the model's default scale; 0: unconditional sampling.
    guidance_scale: float | None = None
    negative_prompt: str = ""


@dataclass(frozen=True)
class Candidate:
    id: str
    lineage: Lineage
    condition: Condition = Condition()
    score_xpred: bool = False
    # The key of a state or noise this server returned; the lineage then holds only what follows it.
    base: bytes = b""


def solve_nfe(op: Solve) -> int:
    if op.solver != "heun":
        return op.steps
    # Heun's last step to sigma = 0 has no correction: the derivative there is undefined.
    return 2 * op.steps - (1 if op.sigma_to == 0 else 0)


def ops_nfe(ops: tuple[Op, ...]) -> int:
    return sum(solve_nfe(op) for op in ops if isinstance(op, Solve))


def _float_bytes(value: float) -> bytes:
    return struct.pack("<d", value)


def _uint_bytes(value: int) -> bytes:
    return struct.pack("<Q", value)


def _text_bytes(value: str) -> bytes:
    encoded = value.encode()
    return _uint_bytes(len(encoded)) + encoded


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_BYTES).digest()


def noise_key(
    model_identity: str, class_label: int | None, guidance: float, seed: int, prompt: str | None = None,
    negative_prompt: str = "",
) -> bytes:
    """The key of the unperturbed noise `seed` under a model and condition."""
    parts = [_text_bytes(model_identity)]
    if prompt is not None:
        parts.append(b"t" + _text_bytes(prompt) + _text_bytes(negative_prompt) + _float_bytes(guidance))
    else:
        parts.append(b"u" if class_label is None else b"c" + _uint_bytes(class_label) + _float_bytes(guidance))
    parts.append(_uint_bytes(seed))
    return _hash(b"".join(parts))


def perturb_key(key: bytes, perturbation: Perturbation) -> bytes:
    """One step per perturbation, so a noise with one more perturbation is its parent's key plus one step."""
    return _hash(key + b"p" + _uint_bytes(perturbation.seed) + _float_bytes(perturbation.cosine))


def op_key(key: bytes, op: Op) -> bytes:
    if isinstance(op, Solve):
        encoded = (
            b"s" + _float_bytes(op.sigma_from) + _float_bytes(op.sigma_to)
            + _text_bytes(op.solver) + _uint_bytes(op.steps) + _text_bytes(op.schedule) + _uint_bytes(op.seed)
        )
    else:
        encoded = b"r" + _float_bytes(op.sigma_from) + _float_bytes(op.sigma_to) + _uint_bytes(op.seed)
    return _hash(key + encoded)


def chain_keys(
    start: bytes, perturbations: tuple[Perturbation, ...], ops: tuple[Op, ...]
) -> tuple[list[bytes], list[bytes]]:
    """(noise keys, op keys): noise_keys[p] is `start` after p perturbations; op_keys[j] the state after ops[:j + 1]."""
    noise_keys = [start]
    for perturbation in perturbations:
        noise_keys.append(perturb_key(noise_keys[-1], perturbation))
    op_keys = []
    key = noise_keys[-1]
    for op in ops:
        key = op_key(key, op)
        op_keys.append(key)
    return noise_keys, op_keys


class Cancellation:
    """Whether the client still wants a request: set on the event loop, read by the engine thread.

    `deadline` is on the time.monotonic() clock; None when the call has none.
    """

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def reason(self, now: float) -> str | None:
        """A gRPC status name once the request is abandoned, else None."""
        if self.cancelled:
            return "CANCELLED"
        if self.deadline is not None and now >= self.deadline:
            return "DEADLINE_EXCEEDED"
        return None


@dataclass(frozen=True)
class Job:
    """A validated candidate, resolved against the model: what the engine runs."""

    index: int
    candidate_id: str
    # With a base, the candidate continues that cached state or noise and `noise_seed` is None.
    base: bytes | None
    noise_seed: int | None
    perturbations: tuple[Perturbation, ...]
    ops: tuple[Op, ...]
    class_label: int | None
    guidance: float
    score_xpred: bool
    verifiers: tuple[str, ...]
    return_sample: bool
    cancellation: Cancellation = field(default_factory=Cancellation)
    prompt: str | None = None
    negative_prompt: str = ""

    @property
    def conditioned(self) -> bool:
        return self.class_label is not None or self.prompt is not None

    def start_key(self, model_identity: str) -> bytes:
        if self.base is not None:
            return self.base
        assert self.noise_seed is not None
        return noise_key(
            model_identity, self.class_label, self.guidance, self.noise_seed, self.prompt, self.negative_prompt
        )

    def final_key(self, model_identity: str) -> bytes:
        """The key of the state after every op; the same whether the candidate came with a base or whole."""
        noise_keys, op_keys = chain_keys(self.start_key(model_identity), self.perturbations, self.ops)
        return op_keys[-1] if op_keys else noise_keys[-1]

"""Batch evaluation of trajectories: resume from the cache, run ops grouped by signature, score.

A bad row never fails its batch: a batched model or verifier call that raises is retried one row at a
time, and only the rows that fail on their own get an error. Rows that failed, or whose request was
abandoned, stay in their group's arrays as NaN and are left out of every later model call.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backend import (
    CandidateError,
    CandidateResult,
    DiffusionModel,
    ModelSpec,
    RowCondition,
    Rows,
    RequestError,
    Verifier,
    describe_failure,
)
from .faults import FaultPlan, InjectedFault
from .lineage import Job, Op, Renoise, Solve, chain_keys, ops_nfe, solve_nfe
from .schedules import solve_sigmas as schedule_sigmas
from .rng import ancestral_stream, base_noise, perturb, renoise_eps
from .validation import same_sigma

SOLVERS = ("euler", "heun", "euler_ancestral")
COMPUTE_OPS = ("solve", "xpred", "decode", "verify")


class EngineStats:
    """What the engine has done since it started; the metrics (metrics.py) read it at scrape time. Written by
    the engine thread only, and its keys never change, so a scrape from another thread reads it safely."""

    def __init__(self) -> None:
        self.nfe_executed = 0
        self.compute_seconds = dict.fromkeys(COMPUTE_OPS, 0.0)


def solve_sigmas(op: Solve, spec: ModelSpec) -> np.ndarray:
    return schedule_sigmas(spec, op.sigma_from, op.sigma_to, op.steps)


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of k-diffusion's get_ancestral_step with eta = 1. A step that does not go down
    adds no noise: a solve from just above sigma_min steps between sigmas equal but for rounding, where the
    variance below comes out an ulp negative (the square root of it raised, failing the whole request)."""
    variance = max(0.0, sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    sigma_up = min(sigma_next, math.sqrt(variance))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def ve_sigma(process: str, sigma: float) -> float:
    """The variance-exploding sigma of a state: a flow state (1 - s) x0 + s n is (x0 + s/(1-s) n) scaled by 1 - s."""
    if process == "ve":
        return sigma
    return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)


def flow_sigma(sigma_ve: float) -> float:
    return 1.0 if math.isinf(sigma_ve) else sigma_ve / (1.0 + sigma_ve)


def renoise_coefficients(process: str, sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """(a, b) with x_to = a x_from + b eps: what takes a state at sigma_from to the marginal at sigma_to."""
    if process == "ve":
        return 1.0, math.sqrt(sigma_to**2 - sigma_from**2)
    scale = (1.0 - sigma_to) / (1.0 - sigma_from)
    return scale, math.sqrt(sigma_to**2 - (scale * sigma_from) ** 2)


@dataclass(frozen=True)
class CacheEntry:
    """A state; for a noise (a lineage's root), `values` is the unit noise n and the state is sigma * n,
    so perturbing a cached noise gives exactly what materializing the whole recipe gives."""

    values: np.ndarray
    sigma: float
    is_noise: bool
    noise_key: bytes
    # (class label, guidance); guidance is None for unconditional states, which do not depend on it.
    condition: tuple[int | None, float | None]
    probe: np.ndarray | None = None
    # D(x, sigma) when a candidate scored this state's x-prediction: the next solve's first evaluation.
    xpred: np.ndarray | None = None

    def state(self) -> np.ndarray:
        return self.sigma * self.values if self.is_noise else self.values.copy()


def _entry_bytes(entry: CacheEntry) -> int:
    return sum(a.nbytes for a in (entry.values, entry.probe, entry.xpred) if a is not None)


class TrajectoryCache:
    """LRU of states keyed by lineage-prefix hash, bounded in bytes (a FLUX latent is a megabyte, a mixture
    state 128 bytes); arrays are stored read-only and never mutated. `hits` and `misses` count candidates that
    did or did not resume from a held state, `evictions` the states dropped to stay within the bound."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def get(self, key: bytes) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: CacheEntry) -> None:
        size = _entry_bytes(entry)
        if size > self.capacity_bytes:
            return
        for array in (entry.values, entry.probe, entry.xpred):
            if array is not None:
                array.flags.writeable = False
        replaced = self._entries.pop(key, None)
        if replaced is not None:
            self.bytes -= _entry_bytes(replaced)
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= _entry_bytes(evicted)
            self.evictions += 1

    def attach_xpred(self, key: bytes, xpred: np.ndarray) -> None:
        """Keeps D(x, sigma) with a held state; a state evicted meanwhile simply loses the reuse."""
        entry = self._entries.get(key)
        if entry is not None and entry.xpred is None:
            self.put(key, replace(entry, xpred=xpred.copy()))


def _condition(job: Job) -> tuple[int | None, str | None, str, float | None]:
    """What a state depends on besides its lineage; guidance only matters to a conditioned state."""
    return job.class_label, job.prompt, job.negative_prompt, job.guidance if job.conditioned else None


def _describe_condition(condition: tuple[int | None, str | None, str, float | None]) -> str:
    label, prompt, negative, guidance = condition
    subject = f"prompt {prompt!r}" + (f" (negative {negative!r})" if negative else "") if prompt is not None else f"class {label}"
    return f"{subject} with guidance {guidance}"


def _row_condition(job: Job) -> RowCondition:
    return RowCondition(job.class_label, job.prompt, job.negative_prompt, job.guidance)


@dataclass
class _Trajectory:
    job: Job
    noise_key: bytes
    op_keys: list[bytes]
    final_key: bytes
    x: np.ndarray
    sigma: float
    next_op: int
    probe: np.ndarray | None
    xpred: np.ndarray | None
    resumed: bool
    nfe_logical: int
    nfe_executed: int = 0
    error: CandidateError | None = None
    sample: np.ndarray | None = None
    # What verifiers see: the sample (and probe) itself, or for an image model its decoded picture.
    image: Any = None
    probe_image: Any = None
    png: bytes = b""
    scores: dict[str, float] = field(default_factory=dict)
    verifier_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def pending_op(self) -> Op | None:
        if self.error is not None or self.next_op == len(self.job.ops):
            return None
        return self.job.ops[self.next_op]

    @property
    def path(self) -> str:
        return f"candidates[{self.job.index}]"


def _signature(op: Op) -> tuple:
    if isinstance(op, Renoise):
        return ("renoise", op.sigma_from, op.sigma_to)
    return ("solve", op.sigma_from, op.sigma_to, op.solver, op.steps, op.schedule)


_ABANDONED = {
    "CANCELLED": "the client cancelled the request",
    "DEADLINE_EXCEEDED": "the request's deadline passed",
}


class Engine:
    def __init__(
        self,
        model: DiffusionModel,
        verifiers: dict[str, Verifier],
        cache: TrajectoryCache,
        probe_sigma: float | None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.model = model
        self.spec = model.spec
        self.verifiers = verifiers
        self.cache = cache
        # The self-supervised verifiers compare the sample with the first x-prediction at or below this.
        self.probe_sigma = probe_sigma
        self.faults = faults
        self.dim = int(np.prod(self.spec.latent_shape))
        self.stats = EngineStats()

    def final_key(self, job: Job) -> bytes:
        return job.final_key(self.spec.identity)

    def run(self, jobs: list[Job]) -> list[CandidateResult]:
        started = [self._start(job) for job in jobs]
        trajectories = [t for t in started if isinstance(t, _Trajectory)]
        # Renoising counts as solving: a few array operations beside the solves.
        with self._timed("solve"):
            self._advance_all(trajectories)
        with self._timed("xpred"):
            self._xpredict(trajectories)
        self._inject_score_failures(trajectories)
        with self._timed("decode"):
            self._decode(trajectories)
        with self._timed("verify"):
            self._score(trajectories)
        # Encoding the pictures as PNGs finishes turning latents into pictures: decoding, for the metrics.
        with self._timed("decode"):
            self._encode_pngs(trajectories)
        return [self._result(t) if isinstance(t, _Trajectory) else t for t in started]

    @contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stats.compute_seconds[op] += time.perf_counter() - started

    # Starting: refusals, the base, the longest cached prefix.

    def _start(self, job: Job) -> _Trajectory | CandidateResult:
        noise_keys, op_keys = chain_keys(job.start_key(self.spec.identity), job.perturbations, job.ops)
        final_key = op_keys[-1] if op_keys else noise_keys[-1]
        path = f"candidates[{job.index}]"
        injected = self.faults.failure("validate", job.candidate_id, final_key) if self.faults else None
        if injected is not None:
            return CandidateResult(id=job.candidate_id, error=injected)
        base = None
        if job.base is not None:
            base = self.cache.get(job.base)
            if base is None:
                return CandidateResult(
                    id=job.candidate_id,
                    error=CandidateError(
                        "NOT_FOUND",
                        f"{path}.base: not held by this server (it restarted, evicted it, or another server made "
                        f"it); send the whole lineage",
                    ),
                )
            problem = self._base_problem(job, base, path)
            if problem is not None:
                return CandidateResult(id=job.candidate_id, error=CandidateError("INVALID_ARGUMENT", problem))

        def trajectory(entry: CacheEntry, next_op: int, resumed: bool, xpred: np.ndarray | None) -> _Trajectory:
            self.cache.record(resumed)
            return _Trajectory(
                job, entry.noise_key, op_keys, final_key, entry.state(), entry.sigma, next_op, entry.probe, xpred,
                resumed, nfe_logical=ops_nfe(job.ops[:next_op]),
            )

        for done in range(len(op_keys), 0, -1):
            entry = self.cache.get(op_keys[done - 1])
            if entry is not None:
                return trajectory(entry, done, True, entry.xpred)
        for done in range(len(noise_keys), 0, -1):
            entry = base if done == 1 and base is not None else self.cache.get(noise_keys[done - 1])
            if entry is None:
                continue
            if not entry.is_noise or done == len(noise_keys):
                return trajectory(entry, 0, True, entry.xpred)
            noise = perturb(entry.values, job.perturbations[done - 1 :])
            return trajectory(self._cache_noise(job, noise_keys[-1], noise), 0, True, None)
        assert job.noise_seed is not None
        noise = perturb(base_noise(job.noise_seed, self.dim), job.perturbations)
        return trajectory(self._cache_noise(job, noise_keys[-1], noise), 0, False, None)

    def _cache_noise(self, job: Job, key: bytes, noise: np.ndarray) -> CacheEntry:
        entry = CacheEntry(noise, self.spec.sigma_max, True, key, _condition(job))
        self.cache.put(key, entry)
        return entry

    def _base_problem(self, job: Job, base: CacheEntry, path: str) -> str | None:
        if base.condition != _condition(job):
            return (
                f"{path}.condition: got {_describe_condition(_condition(job))}, but the base was made with "
                f"{_describe_condition(base.condition)}; send the base's condition"
            )
        if job.perturbations and not base.is_noise:
            return (
                f"{path}.lineage.noise.perturbations: the base is a state at sigma {base.sigma!r}, not a noise; "
                f"perturb a noise_key base, or send no perturbations"
            )
        if job.ops and not same_sigma(job.ops[0].sigma_from, base.sigma):
            kind = "solve" if isinstance(job.ops[0], Solve) else "renoise"
            return (
                f"{path}.lineage.ops[0].{kind}.sigma_from: got {job.ops[0].sigma_from!r}; want {base.sigma!r} "
                f"(the base's sigma): ops continue the base"
            )
        return None

    # Abandoned requests and isolated calls.

    def _drop_abandoned(self, trajectories: list[_Trajectory]) -> None:
        now = time.monotonic()
        for trajectory in trajectories:
            if not trajectory.alive:
                continue
            reason = trajectory.job.cancellation.reason(now)
            if reason is not None:
                trajectory.error = CandidateError(
                    reason, f"{trajectory.path}: {_ABANDONED[reason]}; stopped after {trajectory.nfe_logical} NFEs"
                )

    def _isolated(
        self,
        members: list[_Trajectory],
        rows: list[int],
        call: Callable[[np.ndarray], np.ndarray],
        *,
        fault_stage: str,
        what: str,
        counts_nfe: bool,
        join: Callable[[list[Any]], Any] = np.concatenate,
    ) -> tuple[list[int], Any]:
        """call(row indices) -> one output per row. When the batched call raises, each row is tried alone and
        only the rows that still raise fail. Returns the rows that succeeded and their outputs (joined)."""

        def attempt(subset: list[int]) -> np.ndarray:
            if self.faults is not None:
                candidates = [(members[i].job.candidate_id, members[i].final_key) for i in subset]
                injected = self.faults.raises(fault_stage, candidates)
                if injected is not None:
                    raise InjectedFault(injected)
            if counts_nfe:
                for i in subset:
                    members[i].nfe_executed += 1
                self.stats.nfe_executed += len(subset)
            return call(np.array(subset))

        def fail(i: int, failure: Exception) -> None:
            members[i].error = CandidateError("INTERNAL", f"{members[i].path}: {what} failed: {describe_failure(failure)}")

        try:
            return rows, attempt(rows)
        except RequestError:
            # The whole call failed (a remote network server is unreachable): no row is to blame, nothing retried.
            raise
        except Exception as failure:
            if len(rows) == 1:
                fail(rows[0], failure)
                return [], None
        succeeded, outputs = [], []
        for i in rows:
            try:
                outputs.append(attempt([i]))
            except RequestError:
                raise
            except Exception as failure:
                fail(i, failure)
                continue
            succeeded.append(i)
        return succeeded, join(outputs) if outputs else None

    def _conditioning(self, members: list[_Trajectory]) -> Rows:
        return Rows([_row_condition(t.job) for t in members])

    def _denoise(
        self,
        stage: str,
        members: list[_Trajectory],
        x: np.ndarray,
        sigma: float,
        conditioning: Rows,
        rows: list[int] | None = None,
    ) -> np.ndarray:
        """D(x, sigma) for `rows` (default: every live row); NaN elsewhere."""
        rows = [i for i, t in enumerate(members) if t.alive] if rows is None else rows
        denoised = np.full_like(x, np.nan)
        if not rows:
            return denoised

        def call(subset: np.ndarray) -> np.ndarray:
            if len(subset) == len(x):
                return self.model.denoise(x, float(sigma), conditioning)
            return self.model.denoise(x[subset], float(sigma), conditioning[subset])

        what = "x-prediction" if stage == "xpred" else "solve"
        succeeded, outputs = self._isolated(members, rows, call, fault_stage=stage, what=what, counts_nfe=True)
        if succeeded:
            denoised[succeeded] = outputs
        return denoised

    # Ops.

    def _advance_all(self, trajectories: list[_Trajectory]) -> None:
        while True:
            self._drop_abandoned(trajectories)
            groups: dict[tuple, list[_Trajectory]] = {}
            for trajectory in trajectories:
                op = trajectory.pending_op
                if op is not None:
                    groups.setdefault(_signature(op), []).append(trajectory)
            if not groups:
                return
            for members in groups.values():
                self._drop_abandoned(members)
                members = [t for t in members if t.alive]
                if members:
                    self._run_group(members)

    def _run_group(self, members: list[_Trajectory]) -> None:
        op = members[0].pending_op
        x = np.stack([t.x for t in members])
        x = self._solve(op, x, members) if isinstance(op, Solve) else self._renoise(op, x, members)
        for row, trajectory in enumerate(members):
            if not trajectory.alive:
                continue
            trajectory.x = x[row]
            trajectory.sigma = op.sigma_to
            trajectory.xpred = None
            trajectory.next_op += 1
            if isinstance(op, Solve):
                trajectory.nfe_logical += solve_nfe(op)
            self.cache.put(
                trajectory.op_keys[trajectory.next_op - 1],
                CacheEntry(
                    trajectory.x.copy(), trajectory.sigma, False, trajectory.noise_key, _condition(trajectory.job),
                    trajectory.probe,
                ),
            )

    def _solve(self, op: Solve, x: np.ndarray, members: list[_Trajectory]) -> np.ndarray:
        conditioning = self._conditioning(members)
        sigmas = solve_sigmas(op, self.spec)
        ancestral = op.solver == "euler_ancestral"
        streams = [ancestral_stream(t.pending_op.seed) for t in members] if ancestral else []
        for step, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            if step > 0:
                self._drop_abandoned(members)
            if not any(t.alive for t in members):
                break
            denoised = self._first_denoise(members, x, sigma, conditioning) if step == 0 else (
                self._denoise("solve", members, x, sigma, conditioning)
            )
            self._record_probe(members, sigma, denoised)
            d = to_d(x, sigma, denoised)
            if op.solver == "heun" and sigma_next > 0:
                x_euler = x + d * (sigma_next - sigma)
                d_next = to_d(x_euler, sigma_next, self._denoise("solve", members, x_euler, sigma_next, conditioning))
                x = x + (d + d_next) / 2 * (sigma_next - sigma)
                continue
            if ancestral:
                # Every step draws its row, used or not, so that row t always belongs to step t.
                eps = np.stack([stream.standard_normal(self.dim) for stream in streams])
                stepped = self._ancestral(x, sigma, sigma_next, d, denoised, eps)
                if stepped is not None:
                    x = stepped
                    continue
            x = x + d * (sigma_next - sigma)
        return x

    def _ancestral(
        self, x: np.ndarray, sigma: float, sigma_next: float, d: np.ndarray, denoised: np.ndarray, eps: np.ndarray
    ) -> np.ndarray | None:
        """k-diffusion's ancestral step, taken in variance-exploding coordinates (a flow state is rescaled there
        and back); None where the step is a plain Euler step instead."""
        process = self.spec.process
        s, s_next = ve_sigma(process, sigma), ve_sigma(process, sigma_next)
        if sigma_next == 0 or math.isinf(s):
            return None
        sigma_down, sigma_up = ancestral_step(s, s_next)
        if sigma_up <= 0 or (sigma_down if process == "ve" else flow_sigma(sigma_down)) < self.spec.sigma_min:
            return None
        if process == "ve":
            x = x + d * (sigma_down - sigma)
            return x + sigma_up * eps
        x_ve = x / (1.0 - sigma)
        return (1.0 - sigma_next) * (denoised + (sigma_down / s) * (x_ve - denoised) + sigma_up * eps)

    def _first_denoise(
        self, members: list[_Trajectory], x: np.ndarray, sigma: float, conditioning: Rows
    ) -> np.ndarray:
        """A state whose x-prediction was scored already reuses it: the same numbers, one evaluation fewer.
        Only at exactly its sigma: validation lets a solve start within a relative 1e-9 of it."""
        reused = [i for i, t in enumerate(members) if t.alive and t.xpred is not None and t.sigma == sigma]
        fresh = [i for i, t in enumerate(members) if t.alive and i not in reused]
        denoised = self._denoise("solve", members, x, sigma, conditioning, fresh)
        for i in reused:
            denoised[i] = members[i].xpred
        return denoised

    def _record_probe(self, members: list[_Trajectory], sigma: float, denoised: np.ndarray) -> None:
        if self.probe_sigma is None or sigma > self.probe_sigma:
            return
        for row, trajectory in enumerate(members):
            if trajectory.alive and trajectory.probe is None:
                trajectory.probe = denoised[row].copy()

    def _renoise(self, op: Renoise, x: np.ndarray, members: list[_Trajectory]) -> np.ndarray:
        eps = np.stack([renoise_eps(t.pending_op.seed, self.dim) for t in members])
        scale, added = renoise_coefficients(self.spec.process, op.sigma_from, op.sigma_to)
        return (x if scale == 1.0 else scale * x) + added * eps

    # The scored sample and its scores.

    def _xpredict(self, trajectories: list[_Trajectory]) -> None:
        self._drop_abandoned(trajectories)
        by_sigma: dict[float, list[_Trajectory]] = {}
        for trajectory in trajectories:
            trajectory.sample = trajectory.x
            if not (trajectory.alive and trajectory.job.score_xpred and trajectory.sigma > 0):
                continue
            if trajectory.xpred is not None:
                trajectory.sample = trajectory.xpred
                trajectory.nfe_logical += 1
            else:
                by_sigma.setdefault(trajectory.sigma, []).append(trajectory)
        for sigma, members in by_sigma.items():
            x = np.stack([t.x for t in members])
            denoised = self._denoise("xpred", members, x, sigma, self._conditioning(members))
            for row, trajectory in enumerate(members):
                if not trajectory.alive:
                    continue
                trajectory.xpred = trajectory.sample = denoised[row]
                trajectory.nfe_logical += 1
                self.cache.attach_xpred(trajectory.final_key, denoised[row])

    def _inject_score_failures(self, trajectories: list[_Trajectory]) -> None:
        if self.faults is None:
            return
        for trajectory in trajectories:
            if trajectory.alive:
                trajectory.error = self.faults.failure("score", trajectory.job.candidate_id, trajectory.final_key)

    def _self_supervised(self, trajectory: _Trajectory) -> bool:
        return any(self.verifiers[name].spec.kind == "self-supervised" for name in trajectory.job.verifiers)

    def _decode(self, trajectories: list[_Trajectory]) -> None:
        """Gives each live trajectory the picture its verifiers score (and its probe's, for self-supervised
        ones): the arrays themselves for a latent model, one batched VAE decode for an image model."""
        self._drop_abandoned(trajectories)
        for trajectory in trajectories:
            if trajectory.alive and self._self_supervised(trajectory) and trajectory.probe is None:
                names = [n for n in trajectory.job.verifiers if self.verifiers[n].spec.kind == "self-supervised"]
                trajectory.error = self._missing_probe_error(trajectory, names[0])
        if not self.spec.image_shape:
            for trajectory in trajectories:
                trajectory.image, trajectory.probe_image = trajectory.sample, trajectory.probe
            return
        wanted = [t for t in trajectories if t.alive and (t.job.verifiers or t.job.return_sample)]
        self._decode_rows(wanted, lambda t: t.sample, "image")
        self._decode_rows([t for t in wanted if t.alive and self._self_supervised(t)], lambda t: t.probe, "probe_image")

    def _decode_rows(self, members: list[_Trajectory], latent: Callable[[_Trajectory], np.ndarray], into: str) -> None:
        if not members:
            return
        latents = np.stack([latent(t) for t in members])

        def call(subset: np.ndarray) -> list[Any]:
            return list(self.model.decode(latents[subset]))

        succeeded, images = self._isolated(
            members, list(range(len(members))), call, fault_stage="decode", what="decoding", counts_nfe=False,
            join=lambda parts: [image for part in parts for image in part],
        )
        for row, image in zip(succeeded, images or []):
            setattr(members[row], into, image)

    def _encode_pngs(self, trajectories: list[_Trajectory]) -> None:
        returned = [t for t in trajectories if t.alive and t.job.return_sample and t.image is not None]
        if not self.spec.image_shape or not returned:
            return
        for trajectory, png in zip(returned, self.model.encode_png(self.model.stack_images([t.image for t in returned]))):
            trajectory.png = png

    def _stack(self, images: Sequence[Any]) -> Any:
        return self.model.stack_images(images) if self.spec.image_shape else np.stack(images)

    def _score(self, trajectories: list[_Trajectory]) -> None:
        self._drop_abandoned(trajectories)
        for name, verifier in self.verifiers.items():
            members = [t for t in trajectories if t.alive and name in t.job.verifiers]
            if not members:
                continue
            samples = self._stack([t.image for t in members])
            rows = self._conditioning(members)
            probes = self._stack([t.probe_image for t in members]) if verifier.spec.kind == "self-supervised" else None

            def call(subset: np.ndarray) -> np.ndarray:
                whole = len(subset) == len(members)
                index = subset.tolist()
                return np.asarray(
                    verifier.score(
                        samples if whole else samples[index], rows if whole else rows[index],
                        None if probes is None else probes if whole else probes[index],
                    ),
                    dtype=np.float64,
                )

            started = time.perf_counter()
            succeeded, scores = self._isolated(
                members, list(range(len(members))), call, fault_stage="verifier", what=f"verifier {name!r}",
                counts_nfe=False,
            )
            share = (time.perf_counter() - started) / len(members)
            for trajectory in members:
                trajectory.verifier_seconds[name] = share
            for row, score in zip(succeeded, scores if scores is not None else []):
                trajectory = members[row]
                if self.faults is not None and self.faults.nan(name, trajectory.job.candidate_id, trajectory.final_key):
                    score = math.nan
                if np.isfinite(score):
                    trajectory.scores[name] = float(score)
                else:
                    trajectory.error = CandidateError(
                        "INTERNAL",
                        f"{trajectory.path}: verifier {name!r} gave a non-finite score ({score}); a non-finite "
                        f"score is never a winner",
                    )

    def _missing_probe_error(self, trajectory: _Trajectory, name: str) -> CandidateError:
        return CandidateError(
            "FAILED_PRECONDITION",
            f"{trajectory.path}: verifier {name!r} compares the sample with the x-prediction at "
            f"sigma <= {self.probe_sigma}, but this trajectory never evaluated the denoiser there (it ends at "
            f"sigma {trajectory.sigma!r}); extend the lineage with a solve that passes below {self.probe_sigma}",
        )

    def _result(self, trajectory: _Trajectory) -> CandidateResult:
        job = trajectory.job
        failed = trajectory.error is not None
        reached_final = trajectory.next_op == len(job.ops)
        return CandidateResult(
            id=job.candidate_id,
            scores={} if failed else trajectory.scores,
            nfe_logical=trajectory.nfe_logical,
            nfe_executed=trajectory.nfe_executed,
            error=trajectory.error,
            sample=trajectory.sample.copy() if job.return_sample and not failed and not trajectory.png else None,
            image=b"" if failed else trajectory.png,
            final_sigma=trajectory.sigma,
            resumed_from_cache=trajectory.resumed,
            verifier_seconds=trajectory.verifier_seconds,
            state_key=trajectory.final_key if reached_final else b"",
            noise_key=trajectory.noise_key,
        )

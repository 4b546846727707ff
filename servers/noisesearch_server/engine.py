"""Batch evaluation of trajectories: resume from the cache, run ops grouped by signature, score."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .backend import UNCONDITIONAL, CandidateError, CandidateResult, DiffusionModel, ModelSpec, Verifier
from .lineage import Job, Op, Renoise, Solve, lineage_nfe, needs_xpred_eval, prefix_keys, root_key, solve_nfe
from .rng import materialize_noise, renoise_eps

SOLVERS = ("euler", "heun")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """Karras et al. (2022) eq. 5, with both ends pinned so chained ops meet exactly."""
    ramp = np.linspace(0.0, 1.0, n)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min
    return sigmas


def solve_sigmas(op: Solve, spec: ModelSpec) -> np.ndarray:
    """`op.steps` steps from sigma_from to sigma_to; a solve to 0 takes its last step from sigma_min."""
    if op.sigma_to == 0:
        return np.append(karras_sigmas(op.steps, spec.sigma_min, op.sigma_from, spec.rho), 0.0)
    return karras_sigmas(op.steps + 1, op.sigma_to, op.sigma_from, spec.rho)


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    return (x - denoised) / sigma


@dataclass(frozen=True)
class CacheEntry:
    x: np.ndarray
    sigma: float
    probe: np.ndarray | None


class TrajectoryCache:
    """LRU of states keyed by lineage-prefix hash; arrays are stored read-only and never mutated."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, x: np.ndarray, sigma: float, probe: np.ndarray | None) -> None:
        if self.capacity == 0:
            return
        x = x.copy()
        x.flags.writeable = False
        self._entries[key] = CacheEntry(x, sigma, probe)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


@dataclass
class _Trajectory:
    job: Job
    keys: list[bytes]
    x: np.ndarray
    sigma: float
    probe: np.ndarray | None
    next_op: int
    resumed: bool
    nfe_executed: int = 0
    error: CandidateError | None = None

    @property
    def pending_op(self) -> Op | None:
        if self.error is not None or self.next_op == len(self.job.ops):
            return None
        return self.job.ops[self.next_op]


def _signature(op: Op) -> tuple:
    if isinstance(op, Renoise):
        return ("renoise", op.sigma_from, op.sigma_to)
    return ("solve", op.sigma_from, op.sigma_to, op.solver, op.steps, op.schedule)


class Engine:
    def __init__(
        self,
        model: DiffusionModel,
        verifiers: dict[str, Verifier],
        cache: TrajectoryCache,
        probe_sigma: float | None,
    ) -> None:
        self.model = model
        self.spec = model.spec
        self.verifiers = verifiers
        self.cache = cache
        # The self-supervised verifiers compare the sample with the first x-prediction at or below this.
        self.probe_sigma = probe_sigma
        self.dim = int(np.prod(self.spec.latent_shape))

    def run(self, jobs: list[Job]) -> list[CandidateResult]:
        trajectories = [self._resume(job) for job in jobs]
        self._advance_all(trajectories)
        samples = self._scored_samples(trajectories)
        results = [self._result(t, sample) for t, sample in zip(trajectories, samples)]
        self._score(trajectories, samples, results)
        return results

    def _resume(self, job: Job) -> _Trajectory:
        keys = prefix_keys(root_key(self.spec.identity, job.class_label, job.guidance, job.noise), job.ops)
        for done in range(len(keys), 0, -1):
            entry = self.cache.get(keys[done - 1])
            if entry is not None:
                return _Trajectory(job, keys, entry.x.copy(), entry.sigma, entry.probe, done, resumed=True)
        noise = materialize_noise(job.noise, self.dim)
        return _Trajectory(job, keys, self.spec.sigma_max * noise, self.spec.sigma_max, None, 0, resumed=False)

    def _advance_all(self, trajectories: list[_Trajectory]) -> None:
        while True:
            groups: dict[tuple, list[_Trajectory]] = {}
            for trajectory in trajectories:
                op = trajectory.pending_op
                if op is not None:
                    groups.setdefault(_signature(op), []).append(trajectory)
            if not groups:
                return
            for members in groups.values():
                self._run_group(members)

    def _run_group(self, members: list[_Trajectory]) -> None:
        op = members[0].pending_op
        x = np.stack([t.x for t in members])
        try:
            if isinstance(op, Solve):
                x = self._solve(op, x, members)
            else:
                x = self._renoise(op, x, members)
        except Exception as failure:  # a model fault fails this group's candidates, not the whole batch
            for trajectory in members:
                trajectory.error = CandidateError("INTERNAL", f"{type(op).__name__.lower()} failed: {failure}")
            return
        for row, trajectory in enumerate(members):
            trajectory.x = x[row]
            trajectory.sigma = op.sigma_to
            trajectory.next_op += 1
            self.cache.put(trajectory.keys[trajectory.next_op - 1], trajectory.x, trajectory.sigma, trajectory.probe)

    def _conditioning(self, members: list[_Trajectory]) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array([UNCONDITIONAL if t.job.class_label is None else t.job.class_label for t in members])
        guidance = np.array([t.job.guidance for t in members], dtype=np.float64)
        return labels, guidance

    def _solve(self, op: Solve, x: np.ndarray, members: list[_Trajectory]) -> np.ndarray:
        labels, guidance = self._conditioning(members)
        sigmas = solve_sigmas(op, self.spec)

        def denoise(x_at: np.ndarray, sigma: float) -> np.ndarray:
            return self.model.denoise(x_at, float(sigma), labels, guidance)

        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            denoised = denoise(x, sigma)
            self._record_probe(members, sigma, denoised)
            d = to_d(x, sigma, denoised)
            dt = sigma_next - sigma
            if op.solver == "euler" or sigma_next == 0:
                x = x + d * dt
            else:
                x_euler = x + d * dt
                d_next = to_d(x_euler, sigma_next, denoise(x_euler, sigma_next))
                x = x + (d + d_next) / 2 * dt
        for trajectory in members:
            trajectory.nfe_executed += solve_nfe(op)
        return x

    def _record_probe(self, members: list[_Trajectory], sigma: float, denoised: np.ndarray) -> None:
        if self.probe_sigma is None or sigma > self.probe_sigma:
            return
        for row, trajectory in enumerate(members):
            if trajectory.probe is None:
                trajectory.probe = denoised[row].copy()

    def _renoise(self, op: Renoise, x: np.ndarray, members: list[_Trajectory]) -> np.ndarray:
        eps = np.stack([renoise_eps(t.job.ops[t.next_op].seed, self.dim) for t in members])
        return x + np.sqrt(op.sigma_to**2 - op.sigma_from**2) * eps

    def _scored_samples(self, trajectories: list[_Trajectory]) -> list[np.ndarray]:
        samples = [t.x for t in trajectories]
        by_sigma: dict[float, list[int]] = {}
        for index, trajectory in enumerate(trajectories):
            if trajectory.error is None and needs_xpred_eval(trajectory.job.ops, trajectory.job.score_xpred):
                by_sigma.setdefault(trajectory.sigma, []).append(index)
        for sigma, indices in by_sigma.items():
            members = [trajectories[i] for i in indices]
            labels, guidance = self._conditioning(members)
            denoised = self.model.denoise(np.stack([samples[i] for i in indices]), sigma, labels, guidance)
            for row, index in enumerate(indices):
                samples[index] = denoised[row]
                trajectories[index].nfe_executed += 1
        return samples

    def _result(self, trajectory: _Trajectory, sample: np.ndarray) -> CandidateResult:
        job = trajectory.job
        return CandidateResult(
            id=job.candidate_id,
            nfe_logical=lineage_nfe(job.ops, job.score_xpred),
            nfe_executed=trajectory.nfe_executed,
            error=trajectory.error,
            sample=sample.copy() if job.return_sample and trajectory.error is None else None,
            final_sigma=trajectory.sigma,
            resumed_from_cache=trajectory.resumed,
        )

    def _score(self, trajectories: list[_Trajectory], samples: list[np.ndarray], results: list[CandidateResult]) -> None:
        for name, verifier in self.verifiers.items():
            rows = [i for i, t in enumerate(trajectories) if name in t.job.verifiers and results[i].error is None]
            if verifier.spec.kind == "self-supervised":
                for i in [i for i in rows if trajectories[i].probe is None]:
                    results[i].error = self._missing_probe_error(trajectories[i], name)
                rows = [i for i in rows if trajectories[i].probe is not None]
            if not rows:
                continue
            labels, _ = self._conditioning([trajectories[i] for i in rows])
            xpreds = (
                np.stack([trajectories[i].probe for i in rows]) if verifier.spec.kind == "self-supervised" else None
            )
            started = time.perf_counter()
            scores = verifier.score(np.stack([samples[i] for i in rows]), labels, xpreds)
            share = (time.perf_counter() - started) / len(rows)
            for row, i in enumerate(rows):
                results[i].verifier_seconds[name] = share
                if np.isfinite(scores[row]):
                    results[i].scores[name] = float(scores[row])
                else:
                    results[i].error = CandidateError(
                        "INTERNAL",
                        f"candidates[{trajectories[i].job.index}]: verifier {name!r} gave a non-finite score "
                        f"({scores[row]}); a non-finite score is never a winner",
                    )
        for result in results:
            if result.error is not None:
                result.scores.clear()
                result.sample = None

    def _missing_probe_error(self, trajectory: _Trajectory, name: str) -> CandidateError:
        return CandidateError(
            "FAILED_PRECONDITION",
            f"candidates[{trajectory.job.index}]: verifier {name!r} compares the sample with the x-prediction at "
            f"sigma <= {self.probe_sigma}, but this trajectory never evaluated the denoiser there (it ends at "
            f"sigma {trajectory.sigma!r}); extend the lineage with a solve that passes below {self.probe_sigma}",
        )

// Noise schedules as maps from a normalised noise level l in [0, 1] (1: pure noise) to a model's sigma,
// mirroring the servers' servers/noisesearch_server/schedules.py: what FK steering needs to cut a
// generation into segments, what validation needs to know where a solve evaluates the denoiser, and how
// the paper's sigma-space parameters (paths' sigma_start, delta_f, delta_b) land on any model.
// "karras" is Karras et al. (2022) eq. 5: sigma^(1/rho) is linear in l between sigma_min (l = 0) and
// sigma_max (l = 1), and a solve to 0 takes its last step from sigma_min. "shifted" is the rectified-flow
// schedule of SD3 and FLUX: sigma = sigma_max * s*l / (1 + (s - 1)*l), which reaches 0 at l = 0 (s = 1:
// uniform in sigma, as SiT samples). Both ends of a solve are pinned so that chained ops meet exactly, as
// the servers pin them.
import type { NoiseSchedule, SolveOp } from './types';

/** A model's sigma range and schedule: all a map between levels and sigmas needs (a SearchPlan is one). */
export interface ScheduleRange {
  sigmaMin: number;
  sigmaMax: number;
  schedule: NoiseSchedule;
}

export function karrasSigmas(n: number, sigmaMin: number, sigmaMax: number, rho: number): number[] {
  const hi = sigmaMax ** (1 / rho);
  const lo = sigmaMin ** (1 / rho);
  const sigmas = Array.from({ length: n }, (_, i) => (hi + (n === 1 ? 0 : i / (n - 1)) * (lo - hi)) ** rho);
  sigmas[0] = sigmaMax;
  if (n > 1) sigmas[n - 1] = sigmaMin;
  return sigmas;
}

/** The sigma at a normalised noise level. */
export function sigmaAtLevel(range: ScheduleRange, level: number): number {
  const { kind, rho, shift: s } = range.schedule;
  if (kind === 'karras') {
    const lo = range.sigmaMin ** (1 / rho);
    const hi = range.sigmaMax ** (1 / rho);
    return (lo + level * (hi - lo)) ** rho;
  }
  return (range.sigmaMax * s * level) / (1 + (s - 1) * level);
}

/** The normalised noise level of a sigma: the inverse of sigmaAtLevel. */
export function levelOfSigma(range: ScheduleRange, sigma: number): number {
  const { kind, rho, shift: s } = range.schedule;
  if (kind === 'karras') {
    const lo = range.sigmaMin ** (1 / rho);
    const hi = range.sigmaMax ** (1 / rho);
    return (sigma ** (1 / rho) - lo) / (hi - lo);
  }
  const u = sigma / range.sigmaMax;
  return u / (s - (s - 1) * u);
}

/** The steps + 1 sigmas a solve visits, from sigma_from to sigma_to. */
export function solveSigmas(op: SolveOp, range: ScheduleRange): number[] {
  const { kind, rho } = range.schedule;
  if (kind === 'karras') {
    if (op.sigmaTo === 0) return [...karrasSigmas(op.steps, range.sigmaMin, op.sigmaFrom, rho), 0];
    return karrasSigmas(op.steps + 1, op.sigmaTo, op.sigmaFrom, rho);
  }
  // numpy's linspace: i * step + start, the last one pinned.
  const start = levelOfSigma(range, op.sigmaFrom);
  const step = (levelOfSigma(range, op.sigmaTo) - start) / op.steps;
  const sigmas = Array.from({ length: op.steps + 1 }, (_, i) => sigmaAtLevel(range, i * step + start));
  sigmas[0] = op.sigmaFrom;
  sigmas[op.steps] = op.sigmaTo;
  return sigmas;
}

/** The lowest sigma at which a solve starts a step, i.e. evaluates the denoiser on its own state. */
export function lowestStepSigma(op: SolveOp, range: ScheduleRange): number {
  const sigmas = solveSigmas(op, range);
  return sigmas[sigmas.length - 2];
}

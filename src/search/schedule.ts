// The Karras et al. (2022, eq. 5) schedule the servers step on, as plain data: what FK steering needs to
// cut a generation into segments, and what validation needs to know where a solve evaluates the denoiser.
// Both ends are pinned so that chained ops meet exactly, as the servers pin them.
import type { SolveOp } from './types';

export function karrasSigmas(n: number, sigmaMin: number, sigmaMax: number, rho: number): number[] {
  const hi = sigmaMax ** (1 / rho);
  const lo = sigmaMin ** (1 / rho);
  const sigmas = Array.from({ length: n }, (_, i) => (hi + (n === 1 ? 0 : i / (n - 1)) * (lo - hi)) ** rho);
  sigmas[0] = sigmaMax;
  if (n > 1) sigmas[n - 1] = sigmaMin;
  return sigmas;
}

/** The sigmas a solve steps through, from sigma_from to sigma_to; a solve to 0 takes its last step from sigma_min. */
export function solveSigmas(op: SolveOp, sigmaMin: number, rho: number): number[] {
  if (op.sigmaTo === 0) return [...karrasSigmas(op.steps, sigmaMin, op.sigmaFrom, rho), 0];
  return karrasSigmas(op.steps + 1, op.sigmaTo, op.sigmaFrom, rho);
}

/** The lowest sigma at which a solve starts a step, i.e. evaluates the denoiser on its own state. */
export function lowestStepSigma(op: SolveOp, sigmaMin: number, rho: number): number {
  const sigmas = solveSigmas(op, sigmaMin, rho);
  return sigmas[sigmas.length - 2];
}

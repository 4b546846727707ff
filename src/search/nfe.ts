// NFE accounting as the paper counts it: one per denoiser forward pass. Heun takes two evaluations per
// step, except a last step that ends at sigma = 0, which is an Euler step. A candidate that extends an
// evaluated state (paths, FK particles) pays only for its new ops.
import type { Candidate, Lineage, Op, SolveOp } from './types';

export function solveNfe(op: SolveOp): number {
  if (op.solver === 'euler') return op.steps;
  return 2 * op.steps - (op.sigmaTo === 0 ? 1 : 0);
}

export function opNfe(op: Op): number {
  return 'solve' in op ? solveNfe(op.solve) : 0;
}

export function opsNfe(ops: Op[]): number {
  return ops.reduce((sum, op) => sum + opNfe(op), 0);
}

export function lastSigma(lineage: Lineage, sigmaMax: number): number {
  const last = lineage.ops[lineage.ops.length - 1];
  if (!last) return sigmaMax;
  return 'solve' in last ? last.solve.sigmaTo : last.renoise.sigmaTo;
}

export function xpredNfe(candidate: Candidate, sigmaMax: number): number {
  return candidate.scoreXpred && lastSigma(candidate.lineage, sigmaMax) > 0 ? 1 : 0;
}

/** What evaluating the candidate adds to the search's logical cost. */
export function candidateNfe(candidate: Candidate, sigmaMax: number): number {
  return opsNfe(candidate.lineage.ops.slice(candidate.paidOps ?? 0)) + xpredNfe(candidate, sigmaMax);
}

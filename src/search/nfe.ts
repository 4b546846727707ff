// NFE accounting as the paper counts it: one per denoiser forward pass. Heun takes two evaluations per
// step, except a last step that ends at sigma = 0, which is an Euler step; Euler and Euler-ancestral take
// one. A candidate pays only for what it adds to its base, and a solve that starts from a state whose
// x-prediction was already computed (FK steering's reward) reuses that evaluation.
import type { Candidate, Op, SolveOp, WireCandidate } from './types';

export function solveNfe(op: SolveOp): number {
  if (op.solver !== 'heun') return op.steps;
  return 2 * op.steps - (op.sigmaTo === 0 ? 1 : 0);
}

export function opNfe(op: Op): number {
  return 'solve' in op ? solveNfe(op.solve) : 0;
}

export function opsNfe(ops: Op[]): number {
  return ops.reduce((sum, op) => sum + opNfe(op), 0);
}

/** The sigma a candidate's last op ends at; null when it adds no op to its base. */
export function endSigma(ops: Op[], sigmaMax: number, based: boolean): number | null {
  const last = ops[ops.length - 1];
  if (!last) return based ? null : sigmaMax;
  return 'solve' in last ? last.solve.sigmaTo : last.renoise.sigmaTo;
}

function xpredNfe(candidate: WireCandidate, sigmaMax: number): number {
  if (!candidate.scoreXpred) return 0;
  const sigma = endSigma(candidate.lineage.ops, sigmaMax, candidate.base !== undefined);
  return sigma === null || sigma > 0 ? 1 : 0;
}

/** One fewer when the first op solves on from a base whose x-prediction a server already computed. */
function reusedNfe(candidate: WireCandidate): number {
  const first = candidate.lineage.ops[0];
  return candidate.base?.xpred && first && 'solve' in first ? 1 : 0;
}

/** What evaluating the candidate adds to the search's logical cost. */
export function candidateNfe(candidate: Candidate | WireCandidate, sigmaMax: number): number {
  return opsNfe(candidate.lineage.ops) + xpredNfe(candidate, sigmaMax) - reusedNfe(candidate);
}

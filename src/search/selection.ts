// Selection rules shared by every algorithm: a higher score wins, ties go to the earlier proposal, and a
// candidate that failed or whose score is not finite never wins.
import type { Evaluated, Scored } from './algorithm';

export function toScored(evaluated: Evaluated, verifiers: string[]): Scored | null {
  const { outcome } = evaluated;
  if (outcome.error) return null;
  const score = outcome.scores[verifiers[0]];
  if (score === undefined || !Number.isFinite(score)) return null;
  return { candidate: evaluated.candidate, order: evaluated.order, score, scores: outcome.scores };
}

export function isBetter(a: Scored, b: Scored | null): boolean {
  if (b === null) return true;
  if (a.score !== b.score) return a.score > b.score;
  return a.order < b.order;
}

export function bestOf(scored: Iterable<Scored | null>, incumbent: Scored | null = null): Scored | null {
  let best = incumbent;
  for (const s of scored) if (s && isBetter(s, best)) best = s;
  return best;
}

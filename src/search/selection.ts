// Selection rules shared by every algorithm. With one verifier a candidate's value is its score; with an
// ensemble it is the mean of its per-verifier ranks within the pool being compared (Ma et al. 2025,
// Sec. 4: rank by each verifier, then by the mean rank; tied scores share the mean of their ranks).
// Higher wins; ties go to the earlier proposal. Failed candidates never reach a pool.
import type { Scored } from './algorithm';

export interface Ranked extends Scored {
  /** The verifier score (one verifier) or the mean rank within its pool (an ensemble; 1 = worst). */
  value: number;
}

/** Ranks 1..n by ascending score; tied scores get the mean of the ranks they span. */
export function averagedRanks(scores: number[]): number[] {
  const order = scores.map((score, i) => ({ score, i })).sort((a, b) => a.score - b.score);
  const ranks = new Array<number>(scores.length);
  for (let start = 0; start < order.length; ) {
    let end = start;
    while (end + 1 < order.length && order[end + 1].score === order[start].score) end++;
    const rank = (start + end) / 2 + 1;
    for (let k = start; k <= end; k++) ranks[order[k].i] = rank;
    start = end + 1;
  }
  return ranks;
}

export function rankPool(pool: Scored[], verifiers: string[]): Ranked[] {
  if (verifiers.length === 1) return pool.map((s) => ({ ...s, value: s.scores[verifiers[0]] }));
  const perVerifier = verifiers.map((v) => averagedRanks(pool.map((s) => s.scores[v])));
  return pool.map((s, i) => ({ ...s, value: perVerifier.reduce((sum, ranks) => sum + ranks[i], 0) / verifiers.length }));
}

export function isBetter(a: Ranked, b: Ranked | null): boolean {
  if (b === null) return true;
  if (a.value !== b.value) return a.value > b.value;
  return a.order < b.order;
}

/** The pool's best `k`, best first. */
export function topK(pool: Scored[], verifiers: string[], k: number): Ranked[] {
  return rankPool(pool, verifiers)
    .sort((a, b) => (isBetter(a, b) ? -1 : isBetter(b, a) ? 1 : 0))
    .slice(0, k);
}

export function bestOf(pool: Scored[], verifiers: string[]): Ranked | null {
  return topK(pool, verifiers, 1)[0] ?? null;
}

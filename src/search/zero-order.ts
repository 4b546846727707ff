// Zero-order search (Ma et al. 2025, Sec. 3.2): keep a pivot noise, draw N neighbours of it, move the
// pivot to the best of neighbours and pivot, and repeat until the budget is spent. The authors' neighbour
// keeps the pivot's norm at cosine similarity t to it, rotated toward a random direction orthogonal to
// the pivot (servers apply it as a perturbation of the noise recipe); t plays the role of the step size
// lambda. With `restart`, an iteration in which no neighbour beats the pivot starts again from a fresh
// pivot. Cost: generations * (1 pivot + N per iteration, per restart) + final.
import type { Scored, SearchAlgorithm } from './algorithm';
import { deriveSeed, SeedStream } from './seeds';
import { bestOf, scoredOf } from './selection';
import { budgetProblems, fullSolve, type SearchPlan, type ZeroOrderParams } from './spec';
import type { Candidate, NoiseRecipe } from './types';

export interface ZeroOrderState {
  n: number;
  t: number;
  restart: boolean;
  iteration: number;
  restarts: number;
  /** The current pivot, scored; null until the first pivot of a (re)start is evaluated. */
  pivot: Scored | null;
  /** The final pivot of each earlier start: the winner is the best of these and the current pivot. */
  champions: Scored[];
}

export const ZERO_ORDER_DEFAULTS = { n: 8, t: 0.9, restart: false } as const;

function candidate(plan: SearchPlan, id: string, noise: NoiseRecipe): Candidate {
  return { id, lineage: { noise, ops: [{ solve: fullSolve(plan.sigmaMax, plan.searchSampler) }] }, scoreXpred: false };
}

export const zeroOrderSearch: SearchAlgorithm<ZeroOrderParams, ZeroOrderState> = {
  finalGeneration: true,

  validate(params, plan) {
    const problems = budgetProblems(plan, 2 * plan.generationNfe + plan.finalNfe, 'a pivot, one neighbour and the final generation');
    if (params.n !== undefined && (!Number.isInteger(params.n) || params.n < 1)) problems.push(`n: ${params.n} must be a whole number of at least 1`);
    if (params.t !== undefined && !(params.t > 0 && params.t < 1)) problems.push(`t: ${params.t} must lie in (0, 1): the cosine similarity of a neighbour to its pivot`);
    return problems;
  },

  init(params) {
    return {
      n: params.n ?? ZERO_ORDER_DEFAULTS.n,
      t: params.t ?? ZERO_ORDER_DEFAULTS.t,
      restart: params.restart ?? ZERO_ORDER_DEFAULTS.restart,
      iteration: 0,
      restarts: 0,
      pivot: null,
      champions: [],
    };
  },

  propose(state, plan, nfeAvailable) {
    const affordable = Math.floor(nfeAvailable / plan.generationNfe);
    if (affordable <= 0) return null;
    if (!state.pivot) {
      const seed = deriveSeed(plan.spec.seed, SeedStream.zeroOrderPivot, state.restarts);
      return { candidates: [candidate(plan, `zo-pivot-${state.restarts}`, { seed, perturbations: [] })], verify: true };
    }
    const pivotNoise = state.pivot.candidate.lineage.noise;
    const count = Math.min(state.n, affordable);
    const neighbours = Array.from({ length: count }, (_, j) => {
      const perturbation = { seed: deriveSeed(plan.spec.seed, SeedStream.zeroOrderNeighbour, state.iteration, j), cosine: state.t };
      return candidate(plan, `zo-${state.iteration}-${j}`, { seed: pivotNoise.seed, perturbations: [...pivotNoise.perturbations, perturbation] });
    });
    return { candidates: neighbours, verify: true };
  },

  observe(state, plan, evaluated) {
    const scored = scoredOf(evaluated);
    if (!state.pivot) {
      // A pivot that failed is replaced by the next fresh one.
      return scored.length > 0 ? { ...state, pivot: scored[0] } : { ...state, restarts: state.restarts + 1 };
    }
    const best = bestOf([state.pivot, ...scored], plan.spec.verifiers)!;
    const moved = best.order !== state.pivot.order;
    const next = { ...state, iteration: state.iteration + 1 };
    if (moved) return { ...next, pivot: best };
    if (!state.restart) return next;
    return { ...next, pivot: null, restarts: state.restarts + 1, champions: [...state.champions, state.pivot] };
  },

  best(state, plan) {
    return bestOf(state.pivot ? [...state.champions, state.pivot] : state.champions, plan.spec.verifiers);
  },
};

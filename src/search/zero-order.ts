// Zero-order search (Ma et al. 2025, Sec. 3.2): keep a pivot noise, draw N neighbours of it, move the
// pivot to the best of neighbours and pivot, and repeat until the budget is spent. The authors' neighbour
// keeps the pivot's norm at cosine similarity t to it, rotated toward a random direction orthogonal to
// the pivot (servers apply it as a perturbation of the noise recipe); t plays the role of the step size
// lambda. With `restart`, an iteration in which no neighbour beats the pivot starts again from a fresh
// pivot. Cost: generations * (1 pivot + N per iteration, per restart) + final.
import { scoredOf, type Scored, type SearchAlgorithm } from './algorithm';
import { lowestStepSigma } from './schedule';
import { deriveSeed, SeedStream } from './seeds';
import { bestOf } from './selection';
import { budgetProblems, fullSolve, type SearchPlan, type ZeroOrderParams } from './spec';
import type { Candidate, Lineage, Perturbation } from './types';

/**
 * A noise of the walk: the fresh pivot it started from (its restart index) and its moves since, as
 * (iteration, neighbour) pairs, flattened. Each move names a derived perturbation seed, so it costs two
 * small numbers in the state however long the walk, not a spelled-out perturbation.
 */
interface WalkRecipe {
  start: number;
  moves: number[];
}

export interface ZeroOrderState {
  n: number;
  t: number;
  restart: boolean;
  iteration: number;
  restarts: number;
  /** The current pivot, scored (its recipe a WalkRecipe); null until a (re)start's first pivot is. */
  pivot: Scored | null;
  /**
   * The final pivots of earlier starts the winner can come from: every one for an ensemble (it ranks within
   * all of them), only the best for one verifier.
   */
  champions: Scored[];
}

export const ZERO_ORDER_DEFAULTS = { n: 8, t: 0.9, restart: false } as const;

function perturbation(plan: SearchPlan, t: number, iteration: number, j: number): Perturbation {
  return { seed: deriveSeed(plan.spec.seed, SeedStream.zeroOrderNeighbour, iteration, j), cosine: t };
}

function walkLineage(plan: SearchPlan, walk: WalkRecipe): Lineage {
  const t = (plan.spec.algorithm as ZeroOrderParams).t ?? ZERO_ORDER_DEFAULTS.t;
  const perturbations: Perturbation[] = [];
  for (let i = 0; i < walk.moves.length; i += 2) perturbations.push(perturbation(plan, t, walk.moves[i], walk.moves[i + 1]));
  const noise = { seed: deriveSeed(plan.spec.seed, SeedStream.zeroOrderPivot, walk.start), perturbations };
  return { noise, ops: [{ solve: fullSolve(plan.sigmaMax, plan.searchSampler) }] };
}

/** A neighbour travels as its pivot's noise (by key) plus one perturbation, whatever the pivot's history. */
function neighbour(plan: SearchPlan, state: ZeroOrderState, pivot: Scored, j: number): Candidate {
  const walk = pivot.recipe as WalkRecipe;
  const recipe: WalkRecipe = { start: walk.start, moves: [...walk.moves, state.iteration, j] };
  return {
    id: `zo-${state.iteration}-${j}`,
    base: { key: pivot.noiseKey },
    lineage: { noise: { seed: 0, perturbations: [perturbation(plan, state.t, state.iteration, j)] }, ops: [{ solve: fullSolve(plan.sigmaMax, plan.searchSampler) }] },
    scoreXpred: false,
    recipe,
  };
}

function keepChampions(champions: Scored[], plan: SearchPlan): Scored[] {
  if (plan.spec.verifiers.length > 1 || champions.length <= 1) return champions;
  return [bestOf(champions, plan.spec.verifiers)!];
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
      const recipe: WalkRecipe = { start: state.restarts, moves: [] };
      return { candidates: [{ id: `zo-pivot-${state.restarts}`, lineage: walkLineage(plan, recipe), scoreXpred: false, recipe }], verify: true, keys: 'noise' };
    }
    const pivot = state.pivot;
    const neighbours = Array.from({ length: Math.min(state.n, affordable) }, (_, j) => neighbour(plan, state, pivot, j));
    return { candidates: neighbours, verify: true, keys: 'noise' };
  },

  observe(state, plan, evaluated) {
    const scored = evaluated.map((e) => scoredOf(e, 0)).filter((s): s is Scored => s !== null);
    if (!state.pivot) {
      // A pivot that failed is replaced by the next fresh one.
      return scored.length > 0 ? { ...state, pivot: scored[0] } : { ...state, restarts: state.restarts + 1 };
    }
    const best = bestOf([state.pivot, ...scored], plan.spec.verifiers)!;
    const moved = best.order !== state.pivot.order;
    const next = { ...state, iteration: state.iteration + 1 };
    if (moved) return { ...next, pivot: best };
    if (!state.restart) return next;
    return { ...next, pivot: null, restarts: state.restarts + 1, champions: keepChampions([...state.champions, state.pivot], plan) };
  },

  best(state, plan) {
    return bestOf(state.pivot ? [...state.champions, state.pivot] : state.champions, plan.spec.verifiers);
  },

  lineage(plan, recipe) {
    return walkLineage(plan, recipe as WalkRecipe);
  },

  scoring(_params, plan) {
    return { lowestStepSigma: lowestStepSigma(fullSolve(plan.sigmaMax, plan.searchSampler), plan), firstScoredSigma: 0 };
  },
};

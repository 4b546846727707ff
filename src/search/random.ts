// Random search (Ma et al. 2025, Sec. 3.2): best-of-N over i.i.d. initial noises, each solved to
// sigma = 0 and scored by the verifiers. N is given, or as many as the budget pays for after the final
// generation. Cost: N * generation + final.
import type { Scored, SearchAlgorithm } from './algorithm';
import { lowestStepSigma } from './schedule';
import { deriveSeed, SeedStream } from './seeds';
import { bestOf } from './selection';
import { budgetProblems, fullSolve, type RandomSearchParams, type SearchPlan } from './spec';
import type { Candidate, Lineage } from './types';

export interface RandomSearchState {
  /** Null when N follows the budget, which a budget update may change mid-search. */
  n: number | null;
  next: number;
  roundSize: number;
  /**
   * The scored candidates a winner can come from: all of them for an ensemble (it ranks within every
   * candidate), only the best for one verifier, so the state does not grow with N.
   */
  scored: Array<{ order: number; scores: Record<string, number> }>;
}

const DEFAULT_ROUND_SIZE = 32;

function affordable(plan: SearchPlan): number {
  return Math.floor((plan.spec.budgetNfe - plan.finalNfe) / plan.generationNfe);
}

function noiseLineage(plan: SearchPlan, index: number): Lineage {
  return {
    noise: { seed: deriveSeed(plan.spec.seed, SeedStream.randomNoise, index), perturbations: [] },
    ops: [{ solve: fullSolve(plan.sigmaMax, plan.searchSampler) }],
  };
}

export function randomCandidate(plan: SearchPlan, index: number): Candidate {
  return { id: `random-${index}`, lineage: noiseLineage(plan, index), scoreXpred: false, recipe: index };
}

function asScored({ order, scores }: { order: number; scores: Record<string, number> }): Scored {
  return { id: `random-${order}`, order, scores, key: '', noiseKey: '', sigma: 0, recipe: order };
}

export const randomSearch: SearchAlgorithm<RandomSearchParams, RandomSearchState> = {
  finalGeneration: true,

  validate(params, plan) {
    const problems = budgetProblems(plan, plan.generationNfe + plan.finalNfe, `one candidate (${plan.generationNfe} NFEs) plus the final generation (${plan.finalNfe} NFEs)`);
    if (params.n !== undefined) {
      if (!Number.isInteger(params.n) || params.n < 1) problems.push(`n: ${params.n} must be a whole number of at least 1`);
      else if (problems.length === 0 && params.n > affordable(plan)) {
        const needed = plan.finalNfe + params.n * plan.generationNfe;
        problems.push(`n: ${params.n} noises cost ${needed} NFEs with the final generation; raise --budget to ${needed} or lower --n to ${affordable(plan)}`);
      }
    }
    if (params.roundSize !== undefined && (!Number.isInteger(params.roundSize) || params.roundSize < 1)) {
      problems.push(`roundSize: ${params.roundSize} must be a whole number of at least 1`);
    }
    return problems;
  },

  init(params) {
    return { n: params.n ?? null, next: 0, roundSize: params.roundSize ?? DEFAULT_ROUND_SIZE, scored: [] };
  },

  propose(state, plan, nfeAvailable) {
    const n = state.n ?? affordable(plan);
    const count = Math.min(state.roundSize, n - state.next, Math.floor(nfeAvailable / plan.generationNfe));
    if (count <= 0) return null;
    return { candidates: Array.from({ length: count }, (_, i) => randomCandidate(plan, state.next + i)), verify: true, keys: 'none' };
  },

  observe(state, plan, evaluated) {
    const fresh = evaluated.filter((e) => !e.outcome.error).map((e) => ({ order: e.order, scores: e.outcome.scores }));
    let scored = [...state.scored, ...fresh];
    if (plan.spec.verifiers.length === 1 && scored.length > 1) {
      const best = bestOf(scored.map((s) => asScored(s)), plan.spec.verifiers)!;
      scored = [{ order: best.order, scores: best.scores }];
    }
    return { ...state, next: state.next + evaluated.length, scored };
  },

  best(state, plan) {
    return bestOf(state.scored.map((s) => asScored(s)), plan.spec.verifiers);
  },

  lineage(plan, recipe) {
    return noiseLineage(plan, recipe as number);
  },

  scoring(_params, plan) {
    return { lowestStepSigma: lowestStepSigma(fullSolve(plan.sigmaMax, plan.searchSampler), plan), firstScoredSigma: 0 };
  },
};

// Random search (Ma et al. 2025, Sec. 3.2): best-of-N over i.i.d. initial noises, each solved to
// sigma = 0 and scored by the verifier. N is given, or as many as the budget pays for after the final
// generation.
import type { Evaluated, Scored, SearchAlgorithm } from './algorithm';
import { deriveSeed, SeedStream } from './seeds';
import { bestOf, toScored } from './selection';
import { fullSolve, type RandomSearchParams, type SearchPlan } from './spec';
import type { Candidate } from './types';

export interface RandomSearchState {
  n: number;
  next: number;
  roundSize: number;
  best: Scored | null;
}

const DEFAULT_ROUND_SIZE = 32;

function affordable(plan: SearchPlan): number {
  return Math.floor((plan.spec.budgetNfe - plan.finalNfe) / plan.generationNfe);
}

export function randomCandidate(plan: SearchPlan, index: number): Candidate {
  return {
    id: `random-${index}`,
    lineage: {
      noise: { seed: deriveSeed(plan.spec.seed, SeedStream.randomNoise, index), perturbations: [] },
      ops: [{ solve: fullSolve(plan.sigmaMax, plan.searchSampler) }],
    },
    scoreXpred: false,
  };
}

export const randomSearch: SearchAlgorithm<RandomSearchParams, RandomSearchState> = {
  validate(params, plan) {
    const problems: string[] = [];
    if (params.n !== undefined) {
      if (!Number.isInteger(params.n) || params.n < 1) problems.push(`n: ${params.n} must be a whole number of at least 1`);
      else if (params.n > affordable(plan)) {
        const needed = plan.finalNfe + params.n * plan.generationNfe;
        problems.push(`n: ${params.n} noises cost ${needed} NFEs with the final generation; raise --budget to ${needed} or lower --n to ${affordable(plan)}`);
      }
    }
    if (params.roundSize !== undefined && (!Number.isInteger(params.roundSize) || params.roundSize < 1)) {
      problems.push(`roundSize: ${params.roundSize} must be a whole number of at least 1`);
    }
    return problems;
  },

  init(params, plan) {
    return { n: params.n ?? affordable(plan), next: 0, roundSize: params.roundSize ?? DEFAULT_ROUND_SIZE, best: null };
  },

  propose(state, plan, nfeAvailable) {
    const count = Math.min(state.roundSize, state.n - state.next, Math.floor(nfeAvailable / plan.generationNfe));
    return Array.from({ length: Math.max(0, count) }, (_, i) => randomCandidate(plan, state.next + i));
  },

  observe(state, plan, evaluated: Evaluated[]) {
    return {
      ...state,
      next: state.next + evaluated.length,
      best: bestOf(evaluated.map((e) => toScored(e, plan.spec.verifiers)), state.best),
    };
  },

  best: (state) => state.best,
};

// Search over paths, Paths-N (Ma et al. 2025, Sec. 3.2): run N noises down to sigma_start; then, for each
// kept state, draw M forward-noise perturbations sigma -> sigma + delta_f, solve back to
// sigma + delta_f - delta_b (delta_b > delta_f, so each round ends lower and the walk ends), take one
// extra denoising step for a clean x-prediction for the verifiers, keep the top N of the N * M; repeat
// until sigma = 0, then best-of-N. States are lineages that servers cache, so a kept path is never paid
// for twice. A target below the model's sigma_min is taken to 0.
// Cost: N * solve(sigma_max -> sigma_start) + sum over rounds of N * M * (backward solve + x-prediction);
// N is given, or as many paths as the budget pays for.
import { scoredOf, type Scored, type SearchAlgorithm } from './algorithm';
import { solveNfe } from './nfe';
import { lowestStepSigma } from './schedule';
import { deriveSeed, SeedStream } from './seeds';
import { topK } from './selection';
import { budgetProblems, type PathsParams, type SearchPlan } from './spec';
import type { Candidate, Op, SolveOp } from './types';

/** N has no default: when not given, it is as many paths as the budget pays for. */
export const PATHS_DEFAULTS = { m: 8, sigmaStart: 0.11, deltaF: 0.78, deltaB: 0.81, backwardSteps: 1 } as const;

type Resolved = Required<Omit<PathsParams, 'name'>>;

/** A path: its initial noise's index, then the (kept-path index, perturbation index) it took each round. */
interface PathRecipe {
  i: number;
  picks: number[];
}

export interface PathsState {
  params: Resolved;
  round: number;
  /** The sigma the kept states are at. */
  sigma: number;
  /** Null until the N initial states exist; then the kept paths, best first. */
  kept: Scored[] | null;
  done: boolean;
}

function resolve(params: PathsParams, plan: SearchPlan): Resolved {
  const resolved = {
    n: params.n ?? 1,
    m: params.m ?? PATHS_DEFAULTS.m,
    sigmaStart: params.sigmaStart ?? PATHS_DEFAULTS.sigmaStart,
    deltaF: params.deltaF ?? PATHS_DEFAULTS.deltaF,
    deltaB: params.deltaB ?? PATHS_DEFAULTS.deltaB,
    backwardSteps: params.backwardSteps ?? PATHS_DEFAULTS.backwardSteps,
  };
  if (params.n === undefined) resolved.n = Math.max(1, Math.floor(plan.spec.budgetNfe / pathsCost(plan, resolved)));
  return resolved;
}

function targetSigma(plan: SearchPlan, p: Resolved, sigma: number): number {
  const target = sigma + p.deltaF - p.deltaB;
  // The paper's deltas can land on sigma_min up to rounding (0.05 + 0.78 - 0.81 on a model whose sigma_min
  // is 0.02): that is sigma_min, not a target below it.
  if (Math.abs(target - plan.sigmaMin) <= 1e-9 * plan.sigmaMin) return plan.sigmaMin;
  return target < plan.sigmaMin ? 0 : target;
}

function initialSolve(plan: SearchPlan, p: Resolved): SolveOp {
  return { sigmaFrom: plan.sigmaMax, sigmaTo: p.sigmaStart, solver: plan.searchSampler.solver, steps: plan.searchSampler.steps };
}

function backwardSolve(plan: SearchPlan, p: Resolved, sigma: number): SolveOp {
  return { sigmaFrom: sigma + p.deltaF, sigmaTo: targetSigma(plan, p, sigma), solver: plan.searchSampler.solver, steps: p.backwardSteps };
}

/** Round `round` takes a kept path at `sigma` up by delta_f with fresh noise and back down by delta_b. */
function roundOps(plan: SearchPlan, p: Resolved, round: number, sigma: number, b: number, j: number): Op[] {
  return [
    { renoise: { sigmaFrom: sigma, sigmaTo: sigma + p.deltaF, seed: deriveSeed(plan.spec.seed, SeedStream.pathsRenoise, round, b, j) } },
    { solve: backwardSolve(plan, p, sigma) },
  ];
}

function noiseOf(plan: SearchPlan, i: number) {
  return { seed: deriveSeed(plan.spec.seed, SeedStream.pathsNoise, i), perturbations: [] };
}

/** Logical NFEs of the whole search, as the paper counts them. */
export function pathsCost(plan: SearchPlan, p: Resolved): number {
  let cost = p.n * solveNfe(initialSolve(plan, p));
  for (let sigma = p.sigmaStart; sigma > 0; sigma = targetSigma(plan, p, sigma)) {
    const to = targetSigma(plan, p, sigma);
    cost += p.n * p.m * (solveNfe(backwardSolve(plan, p, sigma)) + (to > 0 ? 1 : 0));
  }
  return cost;
}

export const pathSearch: SearchAlgorithm<PathsParams, PathsState> = {
  finalGeneration: false,

  validate(params, plan) {
    const p = resolve(params, plan);
    const problems: string[] = [];
    for (const key of ['n', 'm', 'backwardSteps'] as const) {
      if (!Number.isInteger(p[key]) || p[key] < 1) problems.push(`${key}: ${p[key]} must be a whole number of at least 1`);
    }
    if (!(p.sigmaStart > plan.sigmaMin && p.sigmaStart < plan.sigmaMax)) {
      problems.push(`sigmaStart: ${p.sigmaStart} must lie inside the model's sigma range (${plan.sigmaMin}, ${plan.sigmaMax})`);
    }
    if (!(p.deltaF > 0)) problems.push(`deltaF: ${p.deltaF} must be above 0`);
    if (!(p.deltaB > p.deltaF)) problems.push(`deltaB: ${p.deltaB} must be above deltaF (${p.deltaF}), or the walk never reaches sigma = 0`);
    else if (p.sigmaStart + p.deltaF > plan.sigmaMax) problems.push(`deltaF: sigmaStart + deltaF = ${p.sigmaStart + p.deltaF} exceeds the model's sigma_max ${plan.sigmaMax}`);
    if (problems.length === 0) problems.push(...budgetProblems(plan, pathsCost(plan, p), `Paths-${p.n} with M = ${p.m}`));
    return problems;
  },

  init(params, plan) {
    const p = resolve(params, plan);
    return { params: p, round: 0, sigma: p.sigmaStart, kept: null, done: false };
  },

  propose(state, plan) {
    const p = state.params;
    if (state.done) return null;
    if (!state.kept) {
      const candidates = Array.from({ length: p.n }, (_, i): Candidate => ({
        id: `paths-init-${i}`,
        lineage: { noise: noiseOf(plan, i), ops: [{ solve: initialSolve(plan, p) }] },
        scoreXpred: false,
        recipe: { i, picks: [] } satisfies PathRecipe,
      }));
      return { candidates, verify: false };
    }
    const to = targetSigma(plan, p, state.sigma);
    const candidates = state.kept.flatMap((path, b) =>
      Array.from({ length: p.m }, (_, j): Candidate => {
        const recipe = path.recipe as PathRecipe;
        return {
          id: `paths-${state.round}-${b}-${j}`,
          base: { key: path.key },
          lineage: { noise: { seed: 0, perturbations: [] }, ops: roundOps(plan, p, state.round, state.sigma, b, j) },
          scoreXpred: to > 0,
          recipe: { i: recipe.i, picks: [...recipe.picks, b, j] } satisfies PathRecipe,
        };
      }),
    );
    return { candidates, verify: true };
  },

  observe(state, plan, evaluated) {
    const p = state.params;
    if (!state.kept) {
      // Unverified initial states carry no scores; they only need to exist (and be cached).
      const kept = evaluated.map((e) => scoredOf(e, p.sigmaStart)).filter((s): s is Scored => s !== null);
      return { ...state, kept, done: kept.length === 0 };
    }
    const sigma = targetSigma(plan, p, state.sigma);
    const scored = evaluated.map((e) => scoredOf(e, sigma)).filter((s): s is Scored => s !== null);
    // Not one path of the round survived: the walk ends with the paths kept before it.
    if (scored.length === 0) return { ...state, done: true };
    const kept = topK(scored, plan.spec.verifiers, p.n).map(({ value: _value, ...path }) => path);
    return { ...state, round: state.round + 1, sigma, kept, done: sigma === 0 };
  },

  best(state, plan) {
    if (!state.kept || state.round === 0) return null;
    return topK(state.kept, plan.spec.verifiers, 1)[0] ?? null;
  },

  lineage(plan, recipe) {
    const p = resolve(plan.spec.algorithm as PathsParams, plan);
    const { i, picks } = recipe as PathRecipe;
    const ops: Op[] = [{ solve: initialSolve(plan, p) }];
    let sigma = p.sigmaStart;
    for (let round = 0; 2 * round < picks.length; round++) {
      ops.push(...roundOps(plan, p, round, sigma, picks[2 * round], picks[2 * round + 1]));
      sigma = targetSigma(plan, p, sigma);
    }
    return { noise: noiseOf(plan, i), ops };
  },

  scoring(params, plan) {
    const p = resolve(params, plan);
    const initial = lowestStepSigma(initialSolve(plan, p), plan.sigmaMin, plan.rho);
    const backward = lowestStepSigma(backwardSolve(plan, p, p.sigmaStart), plan.sigmaMin, plan.rho);
    return { lowestStepSigma: Math.min(initial, backward), firstScoredSigma: targetSigma(plan, p, p.sigmaStart) };
  },
};

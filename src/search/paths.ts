// Search over paths, Paths-N (Ma et al. 2025, Sec. 3.2): run N noises down to sigma_start; then, for each
// kept state, draw M forward-noise perturbations sigma -> sigma + delta_f, solve back to
// sigma + delta_f - delta_b (delta_b > delta_f, so each round ends lower and the walk ends), take one
// extra denoising step for a clean x-prediction for the verifiers, keep the top N of the N * M; repeat
// until sigma = 0, then best-of-N. States are lineages that servers cache, so a kept path is never paid
// for twice.
// sigma_start, delta_f and delta_b are normalised noise levels in [0, 1] (the paper's values are SiT's
// t, which is its level): a state at level l is renoised to level l + delta_f and solved back to level
// l + delta_f - delta_b, each level turned into the model's sigma by its schedule (src/search/schedule.ts).
// A target at or below the level of the model's sigma_min is taken to sigma = 0.
// Cost: N * solve(sigma_max -> sigma_start) + sum over rounds of N * M * (backward solve + x-prediction);
// N is given, or as many paths as the budget pays for.
import { scoredOf, type Scored, type SearchAlgorithm } from './algorithm';
import { solveNfe } from './nfe';
import { levelOfSigma, lowestStepSigma, sigmaAtLevel } from './schedule';
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
  /** The noise level the kept states are at (0 once they are finished samples). */
  level: number;
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
  // Sized by the budget only when the walk ends; validate refuses the parameters otherwise.
  const ends = resolved.deltaB > resolved.deltaF && [resolved.sigmaStart, resolved.deltaF, resolved.deltaB].every((x) => x >= 0 && x <= 1) && walkRounds(resolved) <= maxRounds(plan);
  if (params.n === undefined && ends) resolved.n = Math.max(1, Math.floor(plan.spec.budgetNfe / pathsCost(plan, resolved)));
  return resolved;
}

/** The rounds of the walk from sigmaStart down to 0, at least: each lowers the level by deltaB - deltaF. */
function walkRounds(p: Pick<Resolved, 'sigmaStart' | 'deltaF' | 'deltaB'>): number {
  return p.sigmaStart / (p.deltaB - p.deltaF);
}

/**
 * The most rounds a walk may take: every round costs at least one NFE, so the budget caps them; and a gap
 * deltaB - deltaF too small for floating point (1e-104) would never end the walk, nor the planning of it.
 */
function maxRounds(plan: SearchPlan): number {
  return Math.min(plan.spec.budgetNfe, MAX_PATHS_ROUNDS);
}

const MAX_PATHS_ROUNDS = 10_000;

/** Levels within rounding of each other are one level: the paper's deltas are decimals (0.05 + 0.78 - 0.81). */
const LEVEL_TOLERANCE = 1e-9;

/** The level a round from `level` ends at: 0 when it lands at or below the level of sigma_min. */
function targetLevel(plan: SearchPlan, p: Resolved, level: number): number {
  const target = level + p.deltaF - p.deltaB;
  return target <= levelOfSigma(plan, plan.sigmaMin) + LEVEL_TOLERANCE ? 0 : target;
}

/** A level's sigma; level 0 is sigma = 0 (a finished sample) and level 1 is sigma_max exactly. */
function sigmaOf(plan: SearchPlan, level: number): number {
  if (level <= 0) return 0;
  if (level >= 1) return plan.sigmaMax;
  return sigmaAtLevel(plan, level);
}

function initialSolve(plan: SearchPlan, p: Resolved): SolveOp {
  return { sigmaFrom: plan.sigmaMax, sigmaTo: sigmaOf(plan, p.sigmaStart), solver: plan.searchSampler.solver, steps: plan.searchSampler.steps };
}

function backwardSolve(plan: SearchPlan, p: Resolved, level: number): SolveOp {
  return { sigmaFrom: sigmaOf(plan, level + p.deltaF), sigmaTo: sigmaOf(plan, targetLevel(plan, p, level)), solver: plan.searchSampler.solver, steps: p.backwardSteps };
}

/** Round `round` takes a kept path at `level` up by delta_f with fresh noise and back down by delta_b. */
function roundOps(plan: SearchPlan, p: Resolved, round: number, level: number, b: number, j: number): Op[] {
  const renoise = { sigmaFrom: sigmaOf(plan, level), sigmaTo: sigmaOf(plan, level + p.deltaF), seed: deriveSeed(plan.spec.seed, SeedStream.pathsRenoise, round, b, j) };
  return [{ renoise }, { solve: backwardSolve(plan, p, level) }];
}

function noiseOf(plan: SearchPlan, i: number) {
  return { seed: deriveSeed(plan.spec.seed, SeedStream.pathsNoise, i), perturbations: [] };
}

/** Logical NFEs of the whole search, as the paper counts them. */
export function pathsCost(plan: SearchPlan, p: Resolved): number {
  let cost = p.n * solveNfe(initialSolve(plan, p));
  for (let level = p.sigmaStart; level > 0; level = targetLevel(plan, p, level)) {
    cost += p.n * p.m * (solveNfe(backwardSolve(plan, p, level)) + (targetLevel(plan, p, level) > 0 ? 1 : 0));
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
    const inRange = (x: number) => x >= 0 && x <= 1;
    for (const key of ['sigmaStart', 'deltaF', 'deltaB'] as const) {
      if (!inRange(p[key])) problems.push(`${key}: ${p[key]} is a normalised noise level and must lie in [0, 1] (1: sigma_max, 0: sigma = 0; docs/algorithms.md, "Noise levels")`);
    }
    const lowest = levelOfSigma(plan, plan.sigmaMin);
    if (inRange(p.sigmaStart) && !(p.sigmaStart > lowest + LEVEL_TOLERANCE && p.sigmaStart < 1)) {
      problems.push(`sigmaStart: level ${p.sigmaStart} must lie above the level of the model's sigma_min (${round4(lowest)}) and below 1 (sigma_max)`);
    }
    if (inRange(p.deltaF) && !(p.deltaF > 0)) problems.push(`deltaF: ${p.deltaF} must be above 0`);
    if (inRange(p.deltaF) && inRange(p.deltaB)) {
      if (!(p.deltaB > p.deltaF)) problems.push(`deltaB: ${p.deltaB} must be above deltaF (${p.deltaF}), or the walk never reaches sigma = 0`);
      else if (inRange(p.sigmaStart) && walkRounds(p) > maxRounds(plan)) {
        problems.push(`deltaB: deltaB - deltaF = ${p.deltaB - p.deltaF} takes the walk from level ${p.sigmaStart} to 0 in over ${maxRounds(plan)} rounds (the most the budget or noisesearch allows); widen the gap`);
      }
      else if (inRange(p.sigmaStart) && p.sigmaStart + p.deltaF > 1 + LEVEL_TOLERANCE) problems.push(`deltaF: sigmaStart + deltaF = ${p.sigmaStart + p.deltaF} is above level 1 (the model's sigma_max)`);
    }
    if (problems.length === 0) problems.push(...budgetProblems(plan, pathsCost(plan, p), `Paths-${p.n} with M = ${p.m}`));
    return problems;
  },

  init(params, plan) {
    const p = resolve(params, plan);
    return { params: p, round: 0, level: p.sigmaStart, kept: null, done: false };
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
    const to = targetLevel(plan, p, state.level);
    const candidates = state.kept.flatMap((path, b) =>
      Array.from({ length: p.m }, (_, j): Candidate => {
        const recipe = path.recipe as PathRecipe;
        return {
          id: `paths-${state.round}-${b}-${j}`,
          base: { key: path.key },
          lineage: { noise: { seed: 0, perturbations: [] }, ops: roundOps(plan, p, state.round, state.level, b, j) },
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
      const kept = evaluated.map((e) => scoredOf(e, sigmaOf(plan, p.sigmaStart))).filter((s): s is Scored => s !== null);
      return { ...state, kept, done: kept.length === 0 };
    }
    const level = targetLevel(plan, p, state.level);
    const scored = evaluated.map((e) => scoredOf(e, sigmaOf(plan, level))).filter((s): s is Scored => s !== null);
    // Not one path of the round survived: the walk ends with the paths kept before it.
    if (scored.length === 0) return { ...state, done: true };
    const kept = topK(scored, plan.spec.verifiers, p.n).map(({ value: _value, ...path }) => path);
    return { ...state, round: state.round + 1, level, kept, done: level === 0 };
  },

  best(state, plan) {
    if (!state.kept || state.round === 0) return null;
    return topK(state.kept, plan.spec.verifiers, 1)[0] ?? null;
  },

  lineage(plan, recipe) {
    const p = resolve(plan.spec.algorithm as PathsParams, plan);
    const { i, picks } = recipe as PathRecipe;
    const ops: Op[] = [{ solve: initialSolve(plan, p) }];
    let level = p.sigmaStart;
    for (let round = 0; 2 * round < picks.length; round++) {
      ops.push(...roundOps(plan, p, round, level, picks[2 * round], picks[2 * round + 1]));
      level = targetLevel(plan, p, level);
    }
    return { noise: noiseOf(plan, i), ops };
  },

  scoring(params, plan) {
    const p = resolve(params, plan);
    const initial = lowestStepSigma(initialSolve(plan, p), plan);
    const backward = lowestStepSigma(backwardSolve(plan, p, p.sigmaStart), plan);
    return { lowestStepSigma: Math.min(initial, backward), firstScoredSigma: sigmaOf(plan, targetLevel(plan, p, p.sigmaStart)) };
  },
};

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

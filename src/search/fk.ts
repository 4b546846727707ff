// Feynman-Kac steering (Singhal et al. 2025, arXiv 2501.06848): k particles follow a stochastic sampler;
// every few steps each particle's reward r is taken on its clean x-prediction, potentials G turn rewards
// into weights, and the particles are resampled in proportion to them, so compute flows to promising
// paths. Potentials: max, G = exp(lambda * max of the particle's rewards so far); difference,
// G = exp(lambda * (r_now - r_before)); sum, G = exp(lambda * sum of its rewards). Resampling: multinomial
// at every resampling point, or adaptive, only when the effective sample size drops below k / 2. At
// sigma = 0 the best particle wins.
// The stochastic sampler is Euler-ancestral (k-diffusion's eta = 1) on the model's schedule of the search
// sampler's steps; each segment between resampling points is one `euler_ancestral` solve op whose noise
// stream is derived from (seed, segment, particle slot), so a particle's lineage grows by one small op a
// segment and the state keeps only its slots. The reward's x-prediction at a resampling point is the
// denoiser call the next Euler step needs, so it is computed once and counted once (the servers reuse it).
// With an ensemble, a particle's reward is its mean rank among the particles, scaled to [0, 1].
// Cost: k * steps; k is given, or as many particles as the budget pays for.
import type { Scored, SearchAlgorithm } from './algorithm';
import { solveSigmas } from './schedule';
import { deriveSeed, SeedStream } from './seeds';
import { rankPool, topK } from './selection';
import { budgetProblems, fullSolve, type FkParams, type FkPotential, type FkResampling, type SearchPlan } from './spec';
import type { Candidate, Lineage, Op } from './types';

/** k has no default: when not given, it is as many particles as the budget pays for. */
export const FK_DEFAULTS = { lambda: 10, potential: 'max' as FkPotential, resampling: 'adaptive' as FkResampling, resampleEvery: 2 };
export const FK_POTENTIALS: FkPotential[] = ['max', 'difference', 'sum'];
export const FK_RESAMPLINGS: FkResampling[] = ['multinomial', 'adaptive'];
export const ANCESTRAL_SOLVER = 'euler_ancestral';

type Resolved = Required<Omit<FkParams, 'name'>>;

/** What the potentials need of a particle's rewards so far, kept in constant space. */
export interface RewardSummary {
  max: number;
  sum: number;
  last: number;
  /** The reward before the last one; 0 before the second resampling point. */
  previous: number;
}

interface Particle extends Scored {
  rewards: RewardSummary;
}

export interface FkState {
  params: Resolved;
  /** Index into the schedule of the sigma the particles are at. */
  step: number;
  segment: number;
  /** Recipes are the particle's slot in each segment so far (the first one also names its noise). */
  particles: Particle[] | null;
  resamplings: number;
  done: boolean;
}

function resolve(params: FkParams, plan: SearchPlan): Resolved {
  const resolved = {
    k: params.k ?? 1,
    lambda: params.lambda ?? FK_DEFAULTS.lambda,
    potential: params.potential ?? FK_DEFAULTS.potential,
    resampling: params.resampling ?? FK_DEFAULTS.resampling,
    resampleEvery: params.resampleEvery ?? FK_DEFAULTS.resampleEvery,
  };
  if (params.k === undefined) resolved.k = Math.max(1, Math.floor(plan.spec.budgetNfe / fkCost(plan, resolved)));
  return resolved;
}

/** The sigmas of one generation with the search sampler's steps, ending at 0. */
function schedule(plan: SearchPlan): number[] {
  return solveSigmas(fullSolve(plan.sigmaMax, plan.searchSampler), plan);
}

/** The schedule index a segment starts at, and the one it ends at (resampleEvery steps, never past sigma = 0). */
function segmentBounds(plan: SearchPlan, p: Resolved, segment: number): [number, number] {
  const start = segment * p.resampleEvery;
  return [start, Math.min(start + p.resampleEvery, plan.searchSampler.steps)];
}

function segmentOp(plan: SearchPlan, p: Resolved, sigmas: number[], segment: number, slot: number): Op {
  const [start, end] = segmentBounds(plan, p, segment);
  const seed = deriveSeed(plan.spec.seed, SeedStream.fkStep, segment, slot);
  return { solve: { sigmaFrom: sigmas[start], sigmaTo: sigmas[end], solver: ANCESTRAL_SOLVER, steps: end - start, seed } };
}

function noiseOf(plan: SearchPlan, slot: number) {
  return { seed: deriveSeed(plan.spec.seed, SeedStream.fkNoise, slot), perturbations: [] };
}

/** k Euler steps each: a resampling point's x-prediction is the next step's denoiser call. */
export function fkCost(plan: SearchPlan, p: Pick<Resolved, 'k'>): number {
  return p.k * plan.searchSampler.steps;
}

export function summarize(before: RewardSummary | null, reward: number): RewardSummary {
  if (!before) return { max: reward, sum: reward, last: reward, previous: 0 };
  return { max: Math.max(before.max, reward), sum: before.sum + reward, last: reward, previous: before.last };
}

/** log G: max, lambda * the best reward so far; sum, lambda * their sum; difference, lambda * (r_now - r_before). */
export function logPotential(potential: FkPotential, lambda: number, rewards: RewardSummary): number {
  if (potential === 'max') return lambda * rewards.max;
  if (potential === 'sum') return lambda * rewards.sum;
  return lambda * (rewards.last - rewards.previous);
}

export function normalizedWeights(logWeights: number[]): number[] {
  const top = Math.max(...logWeights);
  const w = logWeights.map((l) => Math.exp(l - top));
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / total);
}

export function effectiveSampleSize(weights: number[]): number {
  return 1 / weights.reduce((sum, w) => sum + w * w, 0);
}

/** Multinomial resampling by inversion: each uniform picks the first particle whose cumulative weight exceeds it. */
export function multinomialIndices(weights: number[], uniforms: number[]): number[] {
  const cumulative: number[] = [];
  weights.reduce((sum, w, i) => (cumulative[i] = sum + w), 0);
  return uniforms.map((u) => {
    const index = cumulative.findIndex((c) => u < c);
    return index === -1 ? weights.length - 1 : index;
  });
}

/** Derived from the seed, so a replay resamples the same way. */
export function resamplingUniforms(seed: number, segment: number, k: number): number[] {
  return Array.from({ length: k }, (_, i) => deriveSeed(seed, SeedStream.fkResample, segment, i) / 2 ** 53);
}

export const fkSteering: SearchAlgorithm<FkParams, FkState> = {
  finalGeneration: false,

  validate(params, plan) {
    const p = resolve(params, plan);
    const problems: string[] = [];
    for (const key of ['k', 'resampleEvery'] as const) {
      if (!Number.isInteger(p[key]) || p[key] < 1) problems.push(`${key}: ${p[key]} must be a whole number of at least 1`);
    }
    if (!(Number.isFinite(p.lambda) && p.lambda >= 0)) problems.push(`lambda: ${p.lambda} must be a finite number >= 0`);
    if (!FK_POTENTIALS.includes(p.potential)) problems.push(`potential: "${p.potential}" is not one of ${FK_POTENTIALS.join(', ')}`);
    if (!FK_RESAMPLINGS.includes(p.resampling)) problems.push(`resampling: "${p.resampling}" is not one of ${FK_RESAMPLINGS.join(', ')}`);
    if (!plan.solvers.includes(ANCESTRAL_SOLVER)) problems.push(`algorithm: fk steers an ${ANCESTRAL_SOLVER} sampler, which model ${plan.spec.model} does not offer (${plan.solvers.join(', ')})`);
    if (problems.length === 0) problems.push(...budgetProblems(plan, fkCost(plan, p), `FK steering with k = ${p.k} particles over ${plan.searchSampler.steps} steps`));
    return problems;
  },

  init(params, plan) {
    return { params: resolve(params, plan), step: 0, segment: 0, particles: null, resamplings: 0, done: false };
  },

  propose(state, plan) {
    if (state.done) return null;
    const p = state.params;
    const sigmas = schedule(plan);
    const [, end] = segmentBounds(plan, p, state.segment);
    const scoreXpred = sigmas[end] > 0;
    // After a failure at the last resampling point fewer particles live on: each continues in its slot.
    const candidates = Array.from({ length: state.particles?.length ?? p.k }, (_, slot): Candidate => {
      const op = segmentOp(plan, p, sigmas, state.segment, slot);
      const id = `fk-${state.segment}-${slot}`;
      const parent = state.particles?.[slot];
      if (!parent) return { id, lineage: { noise: noiseOf(plan, slot), ops: [op] }, scoreXpred, recipe: [slot] };
      return {
        id,
        base: { key: parent.key, xpred: true },
        lineage: { noise: { seed: 0, perturbations: [] }, ops: [op] },
        scoreXpred,
        recipe: [...(parent.recipe as number[]), slot],
      };
    });
    return { candidates, verify: true };
  },

  observe(state, plan, evaluated) {
    const p = state.params;
    const sigmas = schedule(plan);
    const [, end] = segmentBounds(plan, p, state.segment);
    const parents = state.particles;
    const alive = evaluated.map((e, slot) => ({ e, before: parents?.[slot]?.rewards ?? null })).filter(({ e }) => !e.outcome.error);
    // Not one particle survived the segment: the search ends with the particles before it (none at first).
    if (alive.length === 0) return { ...state, particles: parents ?? [], done: true };
    const pool: Scored[] = alive.map(({ e }) => ({
      id: e.candidate.id,
      order: e.order,
      scores: e.outcome.scores,
      key: e.outcome.key ?? '',
      noiseKey: '',
      sigma: sigmas[end],
      recipe: e.candidate.recipe,
    }));
    const ranked = rankPool(pool, plan.spec.verifiers);
    const ensemble = plan.spec.verifiers.length > 1;
    const scale = ensemble ? Math.max(1, ranked.length - 1) : 1;
    const offset = ensemble ? 1 : 0;
    let particles: Particle[] = ranked.map(({ value, ...scored }, i) => ({ ...scored, rewards: summarize(alive[i].before, (value - offset) / scale) }));
    const finished = end >= plan.searchSampler.steps;
    let resamplings = state.resamplings;
    if (!finished) {
      const weights = normalizedWeights(particles.map((x) => logPotential(p.potential, p.lambda, x.rewards)));
      // A failed particle has weight 0: resampling from the survivors brings the population back to k.
      const lost = particles.length < p.k;
      if (p.resampling === 'multinomial' || lost || effectiveSampleSize(weights) < particles.length / 2) {
        const picked = multinomialIndices(weights, resamplingUniforms(plan.spec.seed, state.segment, p.k));
        particles = picked.map((index) => particles[index]);
        resamplings++;
      }
    }
    return { ...state, step: end, segment: state.segment + 1, particles, resamplings, done: finished };
  },

  best(state, plan) {
    if (!state.particles || state.particles.length === 0) return null;
    const unique = [...new Map(state.particles.map((x) => [x.order, x])).values()];
    const best = topK(unique, plan.spec.verifiers, 1)[0];
    if (!best) return null;
    const { rewards: _rewards, ...ranked } = best as typeof best & Partial<Particle>;
    return ranked;
  },

  lineage(plan, recipe) {
    const p = resolve(plan.spec.algorithm as FkParams, plan);
    const sigmas = schedule(plan);
    const slots = recipe as number[];
    const lineage: Lineage = { noise: noiseOf(plan, slots[0]), ops: slots.map((slot, segment) => segmentOp(plan, p, sigmas, segment, slot)) };
    return lineage;
  },

  scoring(params, plan) {
    const p = resolve(params, plan);
    const sigmas = schedule(plan);
    const [, end] = segmentBounds(plan, p, 0);
    return { lowestStepSigma: sigmas[end - 1], firstScoredSigma: sigmas[end] };
  },
};

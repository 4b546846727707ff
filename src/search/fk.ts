// Feynman-Kac steering (Singhal et al. 2025, arXiv 2501.06848): k particles follow a stochastic sampler;
// every few steps each particle's reward r is taken on its clean x-prediction, potentials G turn rewards
// into weights, and the particles are resampled in proportion to them, so compute flows to promising
// paths. Potentials: max, G = exp(lambda * max of the particle's rewards so far); difference,
// G = exp(lambda * (r_now - r_before)); sum, G = exp(lambda * sum of its rewards). Resampling: multinomial
// at every resampling point, or adaptive, only when the effective sample size drops below k / 2. At
// sigma = 0 the best particle wins.
//
// The stochastic sampler is Euler-ancestral written as lineage ops: an Euler step sigma_i -> sigma_down,
// then renoise sigma_down -> sigma_{i+1}, with sigma_up^2 = sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2
// and sigma_down^2 = sigma_{i+1}^2 - sigma_up^2 (k-diffusion's eta = 1). Schedule: Karras, rho = 7.
// With an ensemble, a particle's reward is its mean rank among the particles, scaled to [0, 1].
// Cost: k * steps (one NFE per Euler step) + k per resampling point above sigma = 0 (the x-prediction);
// k is given, or as many particles as the budget pays for.
import type { Scored, SearchAlgorithm } from './algorithm';
import { deriveSeed, SeedStream } from './seeds';
import { rankPool, topK } from './selection';
import { budgetProblems, type FkParams, type FkPotential, type FkResampling, type SearchPlan } from './spec';
import type { Candidate, Op } from './types';

/** k has no default: when not given, it is as many particles as the budget pays for. */
export const FK_DEFAULTS = { lambda: 10, potential: 'max' as FkPotential, resampling: 'adaptive' as FkResampling, resampleEvery: 2 };
export const FK_POTENTIALS: FkPotential[] = ['max', 'difference', 'sum'];
export const FK_RESAMPLINGS: FkResampling[] = ['multinomial', 'adaptive'];
const KARRAS_RHO = 7;

type Resolved = Required<Omit<FkParams, 'name'>>;

interface Particle {
  candidate: Candidate;
  order: number;
  scores: Record<string, number>;
  /** Rewards at each resampling point so far, oldest first. */
  rewards: number[];
}

export interface FkState {
  params: Resolved;
  /** Index into the schedule of the sigma the particles are at. */
  step: number;
  segment: number;
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

export function karrasSigmas(steps: number, sigmaMin: number, sigmaMax: number): number[] {
  const hi = sigmaMax ** (1 / KARRAS_RHO);
  const lo = sigmaMin ** (1 / KARRAS_RHO);
  const sigmas = Array.from({ length: steps }, (_, i) => (hi + (steps === 1 ? 0 : i / (steps - 1)) * (lo - hi)) ** KARRAS_RHO);
  sigmas[0] = sigmaMax;
  if (steps > 1) sigmas[steps - 1] = sigmaMin;
  return [...sigmas, 0];
}

function schedule(plan: SearchPlan): number[] {
  return karrasSigmas(plan.searchSampler.steps, plan.sigmaMin, plan.sigmaMax);
}

function ancestralStep(plan: SearchPlan, from: number, to: number, seed: number): Op[] {
  if (to === 0) return [{ solve: { sigmaFrom: from, sigmaTo: 0, solver: 'euler', steps: 1 } }];
  const up = Math.min(to, Math.sqrt((to * to * (from * from - to * to)) / (from * from)));
  const down = Math.sqrt(to * to - up * up);
  // A step whose deterministic part would land below sigma_min stays deterministic.
  if (down < plan.sigmaMin || up === 0) return [{ solve: { sigmaFrom: from, sigmaTo: to, solver: 'euler', steps: 1 } }];
  return [
    { solve: { sigmaFrom: from, sigmaTo: down, solver: 'euler', steps: 1 } },
    { renoise: { sigmaFrom: down, sigmaTo: to, seed } },
  ];
}

/** Steps of the segment that starts at `step`: up to resampleEvery, never past sigma = 0. */
function segmentEnd(plan: SearchPlan, p: Resolved, step: number): number {
  return Math.min(step + p.resampleEvery, plan.searchSampler.steps);
}

export function fkCost(plan: SearchPlan, p: Resolved): number {
  const steps = plan.searchSampler.steps;
  const resamplingPoints = Math.ceil(steps / p.resampleEvery) - 1;
  return p.k * steps + p.k * resamplingPoints;
}

function logPotential(p: Resolved, rewards: number[]): number {
  const now = rewards[rewards.length - 1];
  if (p.potential === 'max') return p.lambda * Math.max(...rewards);
  if (p.potential === 'sum') return p.lambda * rewards.reduce((a, b) => a + b, 0);
  return p.lambda * (now - (rewards.length > 1 ? rewards[rewards.length - 2] : 0));
}

function normalizedWeights(logWeights: number[]): number[] {
  const top = Math.max(...logWeights);
  const w = logWeights.map((l) => Math.exp(l - top));
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / total);
}

/** Multinomial resampling with uniforms derived from the seed: the same particles on every replay. */
function multinomial(weights: number[], seed: number, segment: number): number[] {
  const cumulative: number[] = [];
  weights.reduce((sum, w, i) => (cumulative[i] = sum + w), 0);
  return weights.map((_, i) => {
    const u = deriveSeed(seed, SeedStream.fkResample, segment, i) / 2 ** 53;
    const index = cumulative.findIndex((c) => u < c);
    return index === -1 ? weights.length - 1 : index;
  });
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
    const end = segmentEnd(plan, p, state.step);
    const parents: Array<Pick<Particle, 'candidate'> | null> = state.particles ?? Array.from({ length: p.k }, () => null);
    const candidates = parents.map((parent, i): Candidate => {
      const noise = parent?.candidate.lineage.noise ?? { seed: deriveSeed(plan.spec.seed, SeedStream.fkNoise, i), perturbations: [] };
      const ops = [...(parent?.candidate.lineage.ops ?? [])];
      const paidOps = ops.length;
      for (let s = state.step; s < end; s++) {
        ops.push(...ancestralStep(plan, sigmas[s], sigmas[s + 1], deriveSeed(plan.spec.seed, SeedStream.fkStep, s, i, state.segment)));
      }
      return { id: `fk-${state.segment}-${i}`, lineage: { noise, ops }, scoreXpred: sigmas[end] > 0, paidOps };
    });
    return { candidates, verify: true };
  },

  observe(state, plan, evaluated) {
    const p = state.params;
    const end = segmentEnd(plan, p, state.step);
    const parents = state.particles;
    const alive = evaluated
      .map((e, i) => ({ e, rewardsBefore: parents?.[i].rewards ?? [] }))
      .filter(({ e }) => !e.outcome.error);
    if (alive.length === 0) return { ...state, particles: [], done: true };
    const ranked = rankPool(alive.map(({ e }) => ({ candidate: e.candidate, order: e.order, scores: e.outcome.scores })), plan.spec.verifiers);
    const scale = plan.spec.verifiers.length > 1 ? Math.max(1, ranked.length - 1) : 1;
    const offset = plan.spec.verifiers.length > 1 ? 1 : 0;
    let particles: Particle[] = ranked.map((r, i) => ({ candidate: r.candidate, order: r.order, scores: r.scores, rewards: [...alive[i].rewardsBefore, (r.value - offset) / scale] }));
    const finished = end >= plan.searchSampler.steps;
    let resamplings = state.resamplings;
    if (!finished) {
      const weights = normalizedWeights(particles.map((x) => logPotential(p, x.rewards)));
      const ess = 1 / weights.reduce((sum, w) => sum + w * w, 0);
      if (p.resampling === 'multinomial' || ess < particles.length / 2) {
        particles = multinomial(weights, plan.spec.seed, state.segment).map((index) => particles[index]);
        resamplings++;
      }
    }
    return { ...state, step: end, segment: state.segment + 1, particles, resamplings, done: finished };
  },

  best(state, plan) {
    if (!state.particles || state.particles.length === 0) return null;
    const unique = [...new Map(state.particles.map((x) => [x.order, x])).values()];
    return topK(unique as Scored[], plan.spec.verifiers, 1)[0] ?? null;
  },
};

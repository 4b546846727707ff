// The contract every search algorithm keeps: plain state plus pure functions. A driver (the Temporal
// workflow or the in-process loop) asks for proposals, evaluates them anywhere, and hands back outcomes.
// State stays compact as a search grows: an evaluated state is kept as the key a server returned for it
// and a recipe in the algorithm's own terms (indices into derived seeds), from which `lineage` rebuilds
// the whole lineage only when a server lost the state.
import type { Ranked } from './selection';
import type { SearchPlan } from './spec';
import type { Candidate, CandidateOutcome, KeyKind, Lineage } from './types';

/** An evaluated state; `order` is its proposal ordinal, the deterministic tie-breaker. */
export interface Scored {
  id: string;
  order: number;
  scores: Record<string, number>;
  /** The server's key of the state ('' when the algorithm never continues it). */
  key: string;
  /** The server's key of its noise ('' when never needed). */
  noiseKey: string;
  /** The state's sigma: 0 for a finished sample. */
  sigma: number;
  /** The algorithm's compact description of the state, for `lineage`. */
  recipe: unknown;
}

export interface Evaluated {
  candidate: Candidate;
  order: number;
  outcome: CandidateOutcome;
}

export interface Proposal {
  candidates: Candidate[];
  /** False for a round that only advances states (they are cached on the servers), with no verifier. */
  verify: boolean;
  /** Which key of each candidate the algorithm keeps (default 'state'; zero-order keeps noises, random none). */
  keys?: KeyKind;
}

/** What a search needs of the verifiers it is given, to refuse a combination before spending anything. */
export interface ScoringTrajectory {
  /** The lowest sigma at which a candidate's trajectory has started a solver step before it is first scored. */
  lowestStepSigma: number;
  /** The sigma of the first states scored (0 when only finished samples are). */
  firstScoredSigma: number;
}

export interface SearchAlgorithm<Params, State> {
  /** Problems with the parameters, each saying what would be right; [] when fine. */
  validate(params: Params, plan: SearchPlan): string[];
  init(params: Params, plan: SearchPlan): State;
  /** The next round, or null when the search is over. Never proposes more than `nfeAvailable` pays for. */
  propose(state: State, plan: SearchPlan, nfeAvailable: number): Proposal | null;
  observe(state: State, plan: SearchPlan, evaluated: Evaluated[]): State;
  best(state: State, plan: SearchPlan): Ranked | null;
  /** The whole lineage of a state from its recipe. */
  lineage(plan: SearchPlan, recipe: unknown): Lineage;
  /** Where the trajectories stand when they are first scored (for verifiers that need an x-prediction). */
  scoring(params: Params, plan: SearchPlan): ScoringTrajectory;
  /**
   * True when the winner's noise is generated again with the final sampler (random, zero-order); false
   * when the winner already is a finished sample whose scores stand (paths, FK steering).
   */
  finalGeneration: boolean;
}

/** The scored state an evaluated candidate reached, or null when it failed. */
export function scoredOf(evaluated: Evaluated, sigma: number): Scored | null {
  const { outcome, candidate } = evaluated;
  if (outcome.error) return null;
  return {
    id: candidate.id,
    order: evaluated.order,
    scores: outcome.scores,
    key: outcome.key ?? '',
    noiseKey: outcome.noiseKey ?? '',
    sigma,
    recipe: candidate.recipe,
  };
}

// The contract every search algorithm keeps: plain state plus pure functions. A driver (the Temporal
// workflow or the in-process loop) asks for proposals, evaluates them anywhere, and hands back outcomes.
import type { Ranked } from './selection';
import type { SearchPlan } from './spec';
import type { Candidate, CandidateOutcome } from './types';

/** A candidate that was scored; `order` is its proposal ordinal, the deterministic tie-breaker. */
export interface Scored {
  candidate: Candidate;
  order: number;
  scores: Record<string, number>;
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
}

export interface SearchAlgorithm<Params, State> {
  /** Problems with the parameters, each saying what would be right; [] when fine. */
  validate(params: Params, plan: SearchPlan): string[];
  init(params: Params, plan: SearchPlan): State;
  /** The next round, or null when the search is over. Never proposes more than `nfeAvailable` pays for. */
  propose(state: State, plan: SearchPlan, nfeAvailable: number): Proposal | null;
  observe(state: State, plan: SearchPlan, evaluated: Evaluated[]): State;
  best(state: State, plan: SearchPlan): Ranked | null;
  /**
   * True when the winner's noise is generated again with the final sampler (random, zero-order); false
   * when the winner already is a finished sample whose scores stand (paths, FK steering).
   */
  finalGeneration: boolean;
}

// The contract every search algorithm keeps: plain state plus pure functions. A driver (the Temporal
// workflow or the in-process loop) asks for proposals, evaluates them anywhere, and hands back outcomes.
import type { SearchPlan } from './spec';
import type { Candidate, CandidateOutcome } from './types';

/** A candidate that was scored; `order` is its proposal ordinal, the deterministic tie-breaker. */
export interface Scored {
  candidate: Candidate;
  order: number;
  score: number;
  scores: Record<string, number>;
}

export interface Evaluated {
  candidate: Candidate;
  order: number;
  outcome: CandidateOutcome;
}

export interface SearchAlgorithm<Params, State> {
  /** Problems with the parameters, each saying what would be right; [] when fine. */
  validate(params: Params, plan: SearchPlan): string[];
  init(params: Params, plan: SearchPlan): State;
  /** The next round; [] ends the search. Never proposes more than `nfeAvailable` pays for. */
  propose(state: State, plan: SearchPlan, nfeAvailable: number): Candidate[];
  observe(state: State, plan: SearchPlan, evaluated: Evaluated[]): State;
  best(state: State): Scored | null;
}

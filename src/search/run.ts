// The generic driver core: one search as a pure state machine over rounds. Both drivers (the Temporal
// workflow and the in-process loop) do only this: `startRound`, evaluate its batches anywhere, then
// `finishRound` with the outcomes. Everything that decides the result lives here, so both drivers give
// the same result for the same spec and seed whatever the batch size, worker count or retries.
import type { Evaluated, Scored, SearchAlgorithm } from './algorithm';
import { candidateNfe } from './nfe';
import { randomSearch } from './random';
import { fullSolve, planSearch, SpecError, type SearchPlan, type SearchSpec } from './spec';
import type { BatchOutcome, BatchRequest, Candidate, CandidateError, CandidateOutcome, ModelInfo, NoiseRecipe } from './types';

const ALGORITHMS: Record<string, SearchAlgorithm<any, any>> = {
  random: randomSearch,
};

export const ALGORITHM_NAMES = Object.keys(ALGORITHMS);

export interface VerifierCost {
  calls: number;
  seconds: number;
}

export interface SearchResult {
  algorithm: string;
  verifiers: string[];
  model: string;
  condition: SearchSpec['condition'];
  seed: number;
  budget: { nfe: number };
  nfe: { search: number; final: number; total: number; executed: number };
  best: {
    score: number;
    scores: Record<string, number>;
    searchScore: number;
    noise: NoiseRecipe;
    candidateId: string;
  };
  candidates: number;
  failedCandidates: number;
  rounds: number;
  verifierSeconds: number;
  verifierCosts: Record<string, VerifierCost>;
}

export interface SearchProgress {
  phase: RunState['phase'];
  round: number;
  nfeSpent: number;
  budget: number;
  candidates: number;
  best: { score: number; candidateId: string; noise: NoiseRecipe } | null;
}

export interface RunState {
  plan: SearchPlan;
  algorithmState: unknown;
  phase: 'search' | 'final' | 'done';
  round: number;
  proposed: number;
  inFlight: Candidate[];
  nfeSearch: number;
  nfeFinal: number;
  nfeExecuted: number;
  candidates: number;
  failedCandidates: number;
  firstFailure: CandidateError | null;
  verifierCosts: Record<string, VerifierCost>;
  result: SearchResult | null;
}

export interface Round {
  run: RunState;
  batches: BatchRequest[];
}

export class SearchFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SearchFailure';
  }
}

function algorithmOf(plan: SearchPlan): SearchAlgorithm<unknown, unknown> {
  return ALGORITHMS[plan.spec.algorithm.name];
}

/** Validates the spec against the model; throws SpecError listing every problem. */
export function createRun(spec: SearchSpec, model: ModelInfo): RunState {
  const algorithm = ALGORITHMS[spec.algorithm?.name];
  if (!algorithm) {
    throw new SpecError([`algorithm: "${spec.algorithm?.name}" is unknown; use one of ${ALGORITHM_NAMES.join(', ')}`]);
  }
  const plan = planSearch(spec, model);
  const problems = algorithm.validate(spec.algorithm, plan);
  if (problems.length > 0) throw new SpecError(problems);
  return {
    plan,
    algorithmState: algorithm.init(spec.algorithm, plan),
    phase: 'search',
    round: 0,
    proposed: 0,
    inFlight: [],
    nfeSearch: 0,
    nfeFinal: 0,
    nfeExecuted: 0,
    candidates: 0,
    failedCandidates: 0,
    firstFailure: null,
    verifierCosts: {},
    result: null,
  };
}

function toBatches(plan: SearchPlan, candidates: Candidate[]): BatchRequest[] {
  const batches: BatchRequest[] = [];
  for (let i = 0; i < candidates.length; i += plan.maxBatch) {
    batches.push({
      model: plan.spec.model,
      condition: plan.spec.condition,
      verifiers: plan.spec.verifiers,
      candidates: candidates.slice(i, i + plan.maxBatch),
    });
  }
  return batches;
}

function finalCandidate(plan: SearchPlan, best: Scored): Candidate {
  return {
    id: 'final',
    lineage: { noise: best.candidate.lineage.noise, ops: [{ solve: fullSolve(plan.sigmaMax, plan.finalSampler) }] },
    scoreXpred: false,
  };
}

function bestSoFar(run: RunState): Scored | null {
  return algorithmOf(run.plan).best(run.algorithmState);
}

function noWinner(run: RunState): SearchFailure {
  const cause = run.firstFailure ? ` (first failure: ${run.firstFailure.code}: ${run.firstFailure.message})` : '';
  return new SearchFailure(`every one of the ${run.candidates} candidates failed, so there is no best noise${cause}`);
}

/** Proposes the next round and splits it into batches no larger than the model's max batch. */
export function startRound(run: RunState): Round {
  if (run.phase === 'done') return { run, batches: [] };
  const { plan } = run;
  let proposals: Candidate[] = [];
  let phase = run.phase;
  if (phase === 'search') {
    const nfeAvailable = plan.spec.budgetNfe - plan.finalNfe - run.nfeSearch;
    proposals = algorithmOf(plan).propose(run.algorithmState, plan, nfeAvailable);
    const cost = proposals.reduce((sum, c) => sum + candidateNfe(c, plan.sigmaMax), 0);
    if (cost > nfeAvailable) throw new SearchFailure(`algorithm proposed ${cost} NFEs with only ${nfeAvailable} left`);
    if (proposals.length === 0) phase = 'final';
  }
  if (phase === 'final') {
    const best = bestSoFar(run);
    if (!best) throw noWinner(run);
    proposals = [finalCandidate(plan, best)];
  }
  return { run: { ...run, phase, round: run.round + 1, inFlight: proposals }, batches: toBatches(plan, proposals) };
}

function addVerifierCosts(costs: Record<string, VerifierCost>, batches: BatchOutcome[]): Record<string, VerifierCost> {
  const total = { ...costs };
  for (const timing of batches.flatMap((b) => b.verifierTimings)) {
    const before = total[timing.verifier] ?? { calls: 0, seconds: 0 };
    total[timing.verifier] = { calls: before.calls + timing.calls, seconds: before.seconds + timing.seconds };
  }
  return total;
}

/** A missing, NaN or infinite score is the candidate's error, never a score that could win. */
function withScoreChecked(outcome: CandidateOutcome, verifiers: string[]): CandidateOutcome {
  if (outcome.error) return outcome;
  const bad = verifiers.find((v) => !Number.isFinite(outcome.scores[v]));
  if (bad === undefined) return outcome;
  return { ...outcome, scores: {}, error: { code: 'INVALID_SCORE', message: `verifier ${bad} returned ${outcome.scores[bad]}` } };
}

/** Hands the outcomes of every batch of the round back; outcome order does not matter. */
export function finishRound(run: RunState, batches: BatchOutcome[]): RunState {
  const byId = new Map(batches.flatMap((b) => b.outcomes).map((o) => [o.id, o]));
  const evaluated: Evaluated[] = run.inFlight.map((candidate, i) => {
    const outcome = byId.get(candidate.id);
    if (!outcome) throw new SearchFailure(`no outcome came back for candidate ${candidate.id}`);
    return { candidate, order: run.proposed + i, outcome: withScoreChecked(outcome, run.plan.spec.verifiers) };
  });
  const nfeLogical = evaluated.reduce((sum, e) => sum + e.outcome.nfeLogical, 0);
  const nfeExecuted = run.nfeExecuted + evaluated.reduce((sum, e) => sum + e.outcome.nfeExecuted, 0);
  const verifierCosts = addVerifierCosts(run.verifierCosts, batches);
  const failures = evaluated.filter((e) => e.outcome.error);

  if (run.phase === 'final') {
    const outcome = evaluated[0].outcome;
    if (outcome.error) throw new SearchFailure(`the final generation failed: ${outcome.error.code}: ${outcome.error.message}`);
    const done = { ...run, nfeFinal: nfeLogical, nfeExecuted, verifierCosts, inFlight: [] };
    return { ...done, phase: 'done', result: buildResult(done, outcome.scores) };
  }
  return {
    ...run,
    algorithmState: algorithmOf(run.plan).observe(run.algorithmState, run.plan, evaluated),
    proposed: run.proposed + evaluated.length,
    inFlight: [],
    nfeSearch: run.nfeSearch + nfeLogical,
    nfeExecuted,
    candidates: run.candidates + evaluated.length,
    failedCandidates: run.failedCandidates + failures.length,
    firstFailure: run.firstFailure ?? failures[0]?.outcome.error ?? null,
    verifierCosts,
  };
}

function buildResult(run: RunState, finalScores: Record<string, number>): SearchResult {
  const { spec } = run.plan;
  const best = bestSoFar(run)!;
  const verifierSeconds = Object.values(run.verifierCosts).reduce((sum, c) => sum + c.seconds, 0);
  return {
    algorithm: spec.algorithm.name,
    verifiers: spec.verifiers,
    model: spec.model,
    condition: spec.condition,
    seed: spec.seed,
    budget: { nfe: spec.budgetNfe },
    nfe: { search: run.nfeSearch, final: run.nfeFinal, total: run.nfeSearch + run.nfeFinal, executed: run.nfeExecuted },
    best: {
      score: finalScores[spec.verifiers[0]],
      scores: finalScores,
      searchScore: best.score,
      noise: best.candidate.lineage.noise,
      candidateId: best.candidate.id,
    },
    candidates: run.candidates,
    failedCandidates: run.failedCandidates,
    rounds: run.round,
    verifierSeconds,
    verifierCosts: run.verifierCosts,
  };
}

export function progressOf(run: RunState): SearchProgress {
  const best = bestSoFar(run);
  return {
    phase: run.phase,
    round: run.round,
    nfeSpent: run.nfeSearch + run.nfeFinal,
    budget: run.plan.spec.budgetNfe,
    candidates: run.candidates,
    best: best && { score: best.score, candidateId: best.candidate.id, noise: best.candidate.lineage.noise },
  };
}

// The generic driver core: one search as a pure state machine over rounds. Both drivers (the Temporal
// workflow and the in-process loop) do only this: `startRound`, evaluate its batches anywhere, then
// `finishRound` with the outcomes. Everything that decides the result lives here, so both drivers give
// the same result for the same spec and seed whatever the batch size, worker count or retries.
import type { Evaluated, SearchAlgorithm } from './algorithm';
import { fkSteering } from './fk';
import { candidateNfe, lastSigma } from './nfe';
import { pathSearch } from './paths';
import { randomSearch } from './random';
import type { Ranked } from './selection';
import { fullSolve, planSearch, SpecError, type AlgorithmName, type SearchPlan, type SearchSpec } from './spec';
import { zeroOrderSearch } from './zero-order';
import type { BatchOutcome, BatchRequest, Candidate, CandidateError, CandidateOutcome, Lineage, ModelInfo, NoiseRecipe } from './types';

const ALGORITHMS: Record<AlgorithmName, SearchAlgorithm<any, any>> = {
  random: randomSearch,
  'zero-order': zeroOrderSearch,
  paths: pathSearch,
  fk: fkSteering,
};

export const ALGORITHM_NAMES = Object.keys(ALGORITHMS) as AlgorithmName[];

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
    /** The verifier's score of the final sample; with an ensemble, the winner's mean rank in its pool. */
    score: number;
    /** Every verifier's score of the final sample. */
    scores: Record<string, number>;
    /** The winner's value when it was selected: its score, or its mean rank. */
    searchScore: number;
    noise: NoiseRecipe;
    candidateId: string;
    /** The lineage of the final sample: evaluate it again to score it with other verifiers. */
    lineage: Lineage;
  };
  candidates: number;
  failedCandidates: number;
  rounds: number;
  /** Ended before the algorithm was done: a stop signal, or a budget lowered below the next round. */
  stopped: boolean;
  verifierSeconds: number;
  verifierCosts: Record<string, VerifierCost>;
}

export interface SearchProgress {
  phase: RunState['phase'];
  round: number;
  nfeSpent: number;
  budget: number;
  candidates: number;
  best: { score: number; scores: Record<string, number>; candidateId: string; noise: NoiseRecipe } | null;
  stopRequested: boolean;
}

export interface RunState {
  plan: SearchPlan;
  algorithmState: unknown;
  phase: 'search' | 'final' | 'done';
  round: number;
  proposed: number;
  inFlight: Candidate[];
  inFlightVerified: boolean;
  stopRequested: boolean;
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
  const { plan, problems } = planSearch(spec, model, algorithm.finalGeneration);
  problems.push(...algorithm.validate(spec.algorithm, plan));
  if (problems.length > 0) throw new SpecError(problems);
  return {
    plan,
    algorithmState: algorithm.init(spec.algorithm, plan),
    phase: 'search',
    round: 0,
    proposed: 0,
    inFlight: [],
    inFlightVerified: true,
    stopRequested: false,
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

function toBatches(plan: SearchPlan, candidates: Candidate[], verify: boolean): BatchRequest[] {
  const batches: BatchRequest[] = [];
  for (let i = 0; i < candidates.length; i += plan.maxBatch) {
    batches.push({
      model: plan.spec.model,
      condition: plan.spec.condition,
      verifiers: verify ? plan.spec.verifiers : [],
      candidates: candidates.slice(i, i + plan.maxBatch),
    });
  }
  return batches;
}

/**
 * The final generation: the winning noise solved again with the final sampler, or, for a winner that is
 * a state above sigma = 0 (a path search stopped early), one Euler step to sigma = 0; null when the
 * winner already is a finished sample.
 */
function finalCandidate(plan: SearchPlan, best: Ranked): Candidate | null {
  const { lineage } = best.candidate;
  if (algorithmOf(plan).finalGeneration) {
    return { id: 'final', lineage: { noise: lineage.noise, ops: [{ solve: fullSolve(plan.sigmaMax, plan.finalSampler) }] }, scoreXpred: false };
  }
  const sigma = lastSigma(lineage, plan.sigmaMax);
  if (sigma === 0) return null;
  return {
    id: 'final',
    lineage: { noise: lineage.noise, ops: [...lineage.ops, { solve: { sigmaFrom: sigma, sigmaTo: 0, solver: 'euler', steps: 1 } }] },
    scoreXpred: false,
    paidOps: lineage.ops.length,
  };
}

function bestSoFar(run: RunState): Ranked | null {
  return algorithmOf(run.plan).best(run.algorithmState, run.plan);
}

/** Ends the search after the round in flight, with the best so far. */
export function requestStop(run: RunState): RunState {
  return { ...run, stopRequested: true };
}

export function nfeSpent(run: RunState): number {
  return run.nfeSearch + run.nfeFinal;
}

/** Why a new budget cannot be taken, or null when it can. */
export function budgetRefusal(run: RunState, budgetNfe: number): string | null {
  if (!Number.isInteger(budgetNfe) || budgetNfe < 1) return `budget: ${budgetNfe} must be a whole number of NFEs`;
  if (run.phase === 'done') return 'budget: the search is already done';
  // An algorithm without a final generation may be cut short above sigma = 0: keep its one finishing step.
  const finishing = algorithmOf(run.plan).finalGeneration ? run.plan.finalNfe : 1;
  const floor = run.nfeSearch + run.inFlight.reduce((sum, c) => sum + candidateNfe(c, run.plan.sigmaMax), 0) + finishing;
  if (budgetNfe < floor) return `budget: ${budgetNfe} NFEs is below what is spent or committed (${floor} NFEs, the final generation included)`;
  return null;
}

export function setBudget(run: RunState, budgetNfe: number): RunState {
  const refusal = budgetRefusal(run, budgetNfe);
  if (refusal) throw new SpecError([refusal]);
  return { ...run, plan: { ...run.plan, spec: { ...run.plan.spec, budgetNfe } } };
}

function noWinner(run: RunState): SearchFailure {
  const cause = run.firstFailure ? ` (first failure: ${run.firstFailure.code}: ${run.firstFailure.message})` : '';
  return new SearchFailure(`every one of the ${run.candidates} candidates failed, so there is no best noise${cause}`);
}

/** Proposes the next round and splits it into batches no larger than the model's max batch. */
export function startRound(run: RunState): Round {
  if (run.phase === 'done') return { run, batches: [] };
  const { plan } = run;
  if (run.phase === 'search') {
    const nfeAvailable = plan.spec.budgetNfe - plan.finalNfe - run.nfeSearch;
    const proposal = run.stopRequested ? null : algorithmOf(plan).propose(run.algorithmState, plan, nfeAvailable);
    if (proposal && proposal.candidates.length > 0) {
      const cost = proposal.candidates.reduce((sum, c) => sum + candidateNfe(c, plan.sigmaMax), 0);
      if (cost > nfeAvailable) {
        return startRound({ ...run, stopRequested: true });
      }
      return {
        run: { ...run, round: run.round + 1, inFlight: proposal.candidates, inFlightVerified: proposal.verify },
        batches: toBatches(plan, proposal.candidates, proposal.verify),
      };
    }
  }
  const best = bestSoFar(run);
  if (!best && run.stopRequested && run.failedCandidates < run.candidates) {
    throw new SearchFailure('the search was stopped before any candidate was scored, so there is no best noise');
  }
  if (!best) throw noWinner(run);
  const final = finalCandidate(plan, best);
  if (!final) return { run: finish(run, best, best.scores, best.candidate.lineage), batches: [] };
  return { run: { ...run, phase: 'final', round: run.round + 1, inFlight: [final], inFlightVerified: true }, batches: toBatches(plan, [final], true) };
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
    const checked = run.inFlightVerified ? withScoreChecked(outcome, run.plan.spec.verifiers) : outcome;
    return { candidate, order: run.proposed + i, outcome: checked };
  });
  const nfeLogical = evaluated.reduce((sum, e) => sum + (e.outcome.error ? 0 : candidateNfe(e.candidate, run.plan.sigmaMax)), 0);
  const nfeExecuted = run.nfeExecuted + evaluated.reduce((sum, e) => sum + e.outcome.nfeExecuted, 0);
  const verifierCosts = addVerifierCosts(run.verifierCosts, batches);
  const failures = evaluated.filter((e) => e.outcome.error);

  if (run.phase === 'final') {
    const outcome = evaluated[0].outcome;
    if (outcome.error) throw new SearchFailure(`the final generation failed: ${outcome.error.code}: ${outcome.error.message}`);
    return finish({ ...run, nfeFinal: nfeLogical, nfeExecuted, verifierCosts }, bestSoFar(run)!, outcome.scores, evaluated[0].candidate.lineage);
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

function finish(run: RunState, best: Ranked, finalScores: Record<string, number>, finalLineage: Lineage): RunState {
  const done = { ...run, inFlight: [] };
  return { ...done, phase: 'done', result: buildResult(done, best, finalScores, finalLineage) };
}

function buildResult(run: RunState, best: Ranked, finalScores: Record<string, number>, finalLineage: Lineage): SearchResult {
  const { spec } = run.plan;
  const ensemble = spec.verifiers.length > 1;
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
      score: ensemble ? best.value : finalScores[spec.verifiers[0]],
      scores: finalScores,
      searchScore: best.value,
      noise: best.candidate.lineage.noise,
      candidateId: best.candidate.id,
      lineage: finalLineage,
    },
    candidates: run.candidates,
    failedCandidates: run.failedCandidates,
    rounds: run.round,
    stopped: run.stopRequested,
    verifierSeconds,
    verifierCosts: run.verifierCosts,
  };
}

export function progressOf(run: RunState): SearchProgress {
  const best = bestSoFar(run);
  return {
    phase: run.phase,
    round: run.round,
    nfeSpent: nfeSpent(run),
    budget: run.plan.spec.budgetNfe,
    candidates: run.candidates,
    best: best && { score: best.value, scores: best.scores, candidateId: best.candidate.id, noise: best.candidate.lineage.noise },
    stopRequested: run.stopRequested,
  };
}

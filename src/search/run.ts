// The generic driver core: one search as a pure state machine over rounds. Both drivers (the Temporal
// workflow and the in-process loop) do only this: `startRound`, evaluate its batches anywhere, then
// `finishRound` with the outcomes. Everything that decides the result lives here, so both drivers give
// the same result for the same spec and seed whatever the batch size, worker count, retries or failures.
//
// Payloads stay small whatever the length of a search: a candidate that continues an evaluated state
// names it by the key its server returned and carries only its own new ops. When a server no longer holds
// a base (restarted, evicted, another server), that candidate alone comes back NOT_FOUND at no cost and is
// sent again with its whole lineage, rebuilt from the algorithm's compact recipe, in batches kept under
// MAX_BATCH_BYTES; results do not change, only executed NFEs do.
import type { Evaluated, SearchAlgorithm } from './algorithm';
import { fkSteering } from './fk';
import { candidateNfe } from './nfe';
import { pathSearch } from './paths';
import { randomSearch } from './random';
import type { Ranked } from './selection';
import { fullSolve, planSearch, searchSpecShapeProblems, SpecError, type AlgorithmName, type SearchPlan, type SearchSpec } from './spec';
import { zeroOrderSearch } from './zero-order';
import type { BatchOutcome, BatchRequest, Candidate, CandidateError, CandidateOutcome, KeyKind, Lineage, ModelInfo, NoiseRecipe, WireCandidate } from './types';

const ALGORITHMS: Record<AlgorithmName, SearchAlgorithm<any, any>> = {
  random: randomSearch,
  'zero-order': zeroOrderSearch,
  paths: pathSearch,
  fk: fkSteering,
};

export const ALGORITHM_NAMES = Object.keys(ALGORITHMS) as AlgorithmName[];

/** A batch's candidates, as JSON, stay under this: Temporal refuses payloads over 2 MB and warns at 512 KB. */
export const MAX_BATCH_BYTES = 192 * 1024;

/** The per-candidate error of a candidate whose base the server does not hold. */
export const BASE_MISSING = 'NOT_FOUND';

export interface VerifierCost {
  calls: number;
  seconds: number;
}

/**
 * Measured seconds of fleet time (on the servers, not wall time): the search's share of the denoising of
 * every batch it ran in, and each verifier's; total is their sum.
 */
export interface SearchSeconds {
  denoise: number;
  verifiers: Record<string, number>;
  total: number;
}

export interface SearchResult {
  algorithm: string;
  verifiers: string[];
  model: string;
  condition: SearchSpec['condition'];
  seed: number;
  /** seconds: the budget of fleet seconds, when the spec set one. */
  budget: { nfe: number; seconds?: number };
  /**
   * Logical NFEs as the paper counts them (search + final = total), of which `failed` went to candidates
   * that failed (what the servers spent on them before failing); `executed` is what servers really ran.
   */
  nfe: { search: number; final: number; total: number; executed: number; failed: number };
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
    /** The final sample's key on the servers that evaluated it: a cheap base while they hold it. */
    key: string;
  };
  candidates: number;
  failedCandidates: number;
  rounds: number;
  /** Ended before the algorithm was done: a stop signal, or a budget lowered below the next round. */
  stopped: boolean;
  verifierSeconds: number;
  verifierCosts: Record<string, VerifierCost>;
  /** Absent from results recorded before searches measured their denoising. */
  seconds?: SearchSeconds;
}

export interface SearchProgress {
  phase: RunState['phase'];
  round: number;
  nfeSpent: number;
  budget: number;
  /** Fleet seconds measured so far (denoising and verifiers), and the seconds budget when the spec has one. */
  secondsSpent: number;
  budgetSeconds?: number;
  candidates: number;
  failedCandidates: number;
  best: { score: number; scores: Record<string, number>; candidateId: string; noise: NoiseRecipe } | null;
  stopRequested: boolean;
}

/** A round whose candidates are not all settled: some go again with their whole lineage. */
export interface Resending {
  /** The outcomes already final. */
  settled: CandidateOutcome[];
  /** Candidates (by id) to send whole. */
  ids: string[];
}

export interface RunState {
  plan: SearchPlan;
  algorithmState: unknown;
  phase: 'search' | 'final' | 'done';
  round: number;
  proposed: number;
  inFlight: Candidate[];
  inFlightVerified: boolean;
  /** Which key of its candidates the round in flight keeps. */
  inFlightKeys: KeyKind;
  resending: Resending | null;
  stopRequested: boolean;
  /** What every search candidate proposed so far costs: the budget bounds it, so a search whose candidates fail still ends. */
  nfeProposed: number;
  /** Logical NFEs charged: a scored candidate's whole cost, a failed one's work before it failed. */
  nfeSearch: number;
  nfeFinal: number;
  nfeFailed: number;
  nfeExecuted: number;
  candidates: number;
  failedCandidates: number;
  firstFailure: CandidateError | null;
  verifierCosts: Record<string, VerifierCost>;
  /** The servers' denoising seconds charged to this search; absent in a state carried over from before it was measured. */
  denoiseSeconds?: number;
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

/**
 * A verifier that compares the sample with an earlier x-prediction (self-supervised, xpredSigma > 0) can
 * only score candidates whose trajectory has already evaluated the denoiser at or below that sigma.
 */
function verifierProblems(spec: SearchSpec, plan: SearchPlan, model: ModelInfo, algorithm: SearchAlgorithm<unknown, unknown>): string[] {
  const needing = model.verifiers.filter((v) => spec.verifiers.includes(v.name) && v.xpredSigma > 0);
  if (needing.length === 0) return [];
  const { lowestStepSigma, firstScoredSigma } = algorithm.scoring(spec.algorithm, plan);
  const plain = model.verifiers.filter((v) => !(v.xpredSigma > 0)).map((v) => v.name);
  return needing
    .filter((v) => lowestStepSigma > v.xpredSigma)
    .map((v) => {
      const where = firstScoredSigma > 0 ? `scores its first candidates at sigma ${round4(firstScoredSigma)}` : 'scores its candidates';
      return `verifier: ${v.name} compares the sample with the denoiser's x-prediction at sigma <= ${v.xpredSigma}, but ${spec.algorithm.name} ${where} after stepping only down to sigma ${round4(lowestStepSigma)}; use a verifier without one (${plain.join(', ')})`;
    });
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

/** Validates the spec against the model; throws SpecError listing every problem. */
export function createRun(spec: SearchSpec, model: ModelInfo): RunState {
  // A workflow's input may come from any client: its shape first, so nothing below meets a wrong type.
  const shape = searchSpecShapeProblems(spec);
  if (shape.length > 0) throw new SpecError(shape);
  const algorithm = ALGORITHMS[spec.algorithm.name];
  const { plan, problems } = planSearch(spec, model, algorithm.finalGeneration);
  problems.push(...algorithm.validate(spec.algorithm, plan));
  if (problems.length === 0) problems.push(...verifierProblems(spec, plan, model, algorithm));
  if (problems.length > 0) throw new SpecError(problems);
  return {
    plan,
    algorithmState: algorithm.init(spec.algorithm, plan),
    phase: 'search',
    round: 0,
    proposed: 0,
    inFlight: [],
    inFlightVerified: true,
    inFlightKeys: 'state',
    resending: null,
    stopRequested: false,
    nfeProposed: 0,
    nfeSearch: 0,
    nfeFinal: 0,
    nfeFailed: 0,
    nfeExecuted: 0,
    candidates: 0,
    failedCandidates: 0,
    firstFailure: null,
    verifierCosts: {},
    denoiseSeconds: 0,
    result: null,
  };
}

function wire(candidate: Candidate): WireCandidate {
  const { id, base, lineage, scoreXpred } = candidate;
  return base ? { id, base, lineage, scoreXpred } : { id, lineage, scoreXpred };
}

/** Batches of at most the model's max batch, and of at most MAX_BATCH_BYTES of candidates. */
function toBatches(plan: SearchPlan, candidates: WireCandidate[], verify: boolean, keys: KeyKind = 'state'): BatchRequest[] {
  const batch = (members: WireCandidate[]): BatchRequest => ({
    model: plan.spec.model,
    condition: plan.spec.condition,
    verifiers: verify ? plan.spec.verifiers : [],
    candidates: members,
    ...(keys !== 'state' ? { keys } : {}),
  });
  const batches: BatchRequest[] = [];
  let current: WireCandidate[] = [];
  let bytes = 0;
  for (const candidate of candidates) {
    const size = JSON.stringify(candidate).length;
    if (current.length > 0 && (current.length === plan.maxBatch || bytes + size > MAX_BATCH_BYTES)) {
      batches.push(batch(current));
      current = [];
      bytes = 0;
    }
    current.push(candidate);
    bytes += size;
  }
  if (current.length > 0) batches.push(batch(current));
  return batches;
}

const NO_NOISE: NoiseRecipe = { seed: 0, perturbations: [] };

/** The final candidate's recipe: the winner's, and how the final sample follows from it. */
interface FinalRecipe {
  winner: unknown;
  /** True: the winner's noise solved with the final sampler; false: one Euler step from its state to 0. */
  regenerate: boolean;
}

/**
 * The final generation: the winning noise solved again with the final sampler, or, for a winner that is
 * a state above sigma = 0 (a path search or FK steering stopped early), one Euler step to sigma = 0; null
 * when the winner already is a finished sample.
 */
function finalCandidate(plan: SearchPlan, best: Ranked): Candidate | null {
  const regenerate = algorithmOf(plan).finalGeneration;
  const recipe: FinalRecipe = { winner: best.recipe, regenerate };
  if (regenerate) {
    const ops = [{ solve: fullSolve(plan.sigmaMax, plan.finalSampler) }];
    if (best.noiseKey) return { id: 'final', base: { key: best.noiseKey }, lineage: { noise: NO_NOISE, ops }, scoreXpred: false, recipe };
    return { id: 'final', lineage: { noise: algorithmOf(plan).lineage(plan, best.recipe).noise, ops }, scoreXpred: false, recipe };
  }
  if (best.sigma === 0) return null;
  const ops = [{ solve: { sigmaFrom: best.sigma, sigmaTo: 0, solver: 'euler' as const, steps: 1 } }];
  return { id: 'final', base: { key: best.key }, lineage: { noise: NO_NOISE, ops }, scoreXpred: false, recipe };
}

/** The whole lineage of a candidate's state, from its recipe: what a server that lost its base recomputes. */
function wholeLineage(run: RunState, candidate: Candidate): Lineage {
  const algorithm = algorithmOf(run.plan);
  if (run.phase !== 'final') return algorithm.lineage(run.plan, candidate.recipe);
  const { winner, regenerate } = candidate.recipe as FinalRecipe;
  const won = algorithm.lineage(run.plan, winner);
  return regenerate ? { noise: won.noise, ops: candidate.lineage.ops } : { noise: won.noise, ops: [...won.ops, ...candidate.lineage.ops] };
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
  // In the final phase the final generation is the round in flight, already committed.
  const finishing = algorithmOf(run.plan).finalGeneration ? run.plan.finalNfe : 1;
  const floor = run.nfeProposed + finishing;
  if (budgetNfe < floor) return `budget: ${budgetNfe} NFEs is below what is spent or committed (${floor} NFEs, the final generation included)`;
  return null;
}

export function setBudget(run: RunState, budgetNfe: number): RunState {
  const refusal = budgetRefusal(run, budgetNfe);
  if (refusal) throw new SpecError([refusal]);
  return { ...run, plan: { ...run.plan, spec: { ...run.plan.spec, budgetNfe } } };
}

/** Fleet seconds measured so far: the servers' denoising and every verifier's, from the outcomes handed back. */
export function secondsSpent(run: RunState): number {
  return (run.denoiseSeconds ?? 0) + Object.values(run.verifierCosts).reduce((sum, c) => sum + c.seconds, 0);
}

/**
 * Whether a round of `roundNfe` logical NFEs would take the search past its budget of fleet seconds, the
 * final generation's seconds kept in reserve as the NFE budget keeps its NFEs. The prediction is the seconds
 * per logical NFE measured so far; before anything was measured there is none, so the first round runs.
 */
function pastSecondsBudget(run: RunState, roundNfe: number): boolean {
  const budget = run.plan.spec.budgetSeconds;
  const spent = secondsSpent(run);
  if (budget === undefined || run.nfeProposed === 0 || spent === 0) return false;
  const perNfe = spent / run.nfeProposed;
  return spent + perNfe * (roundNfe + run.plan.finalNfe) > budget;
}

function noWinner(run: RunState): SearchFailure {
  const cause = run.firstFailure ? ` (first failure: ${run.firstFailure.code}: ${run.firstFailure.message})` : '';
  if (run.failedCandidates === run.candidates) return new SearchFailure(`every one of the ${run.candidates} candidates failed, so there is no best noise${cause}`);
  return new SearchFailure(`no candidate could be scored (${run.failedCandidates} of ${run.candidates} failed), so there is no best noise${cause}`);
}

/** Proposes the next round and splits it into batches; or sends again, whole, what a server lost the base of. */
export function startRound(run: RunState): Round {
  if (run.phase === 'done') return { run, batches: [] };
  const { plan } = run;
  if (run.resending) {
    const again = run.inFlight.filter((c) => run.resending!.ids.includes(c.id));
    return { run, batches: toBatches(plan, again.map((c) => ({ id: c.id, lineage: wholeLineage(run, c), scoreXpred: c.scoreXpred })), run.inFlightVerified, run.inFlightKeys) };
  }
  if (run.phase === 'search') {
    const nfeAvailable = plan.spec.budgetNfe - plan.finalNfe - run.nfeProposed;
    const proposal = run.stopRequested ? null : algorithmOf(plan).propose(run.algorithmState, plan, nfeAvailable);
    if (proposal && proposal.candidates.length > 0) {
      const cost = proposal.candidates.reduce((sum, c) => sum + candidateNfe(c, plan.sigmaMax), 0);
      if (cost > nfeAvailable || pastSecondsBudget(run, cost)) {
        return startRound({ ...run, stopRequested: true });
      }
      return {
        run: { ...run, round: run.round + 1, inFlight: proposal.candidates, inFlightVerified: proposal.verify, inFlightKeys: proposal.keys ?? 'state', nfeProposed: run.nfeProposed + cost },
        batches: toBatches(plan, proposal.candidates.map(wire), proposal.verify, proposal.keys),
      };
    }
  }
  const best = bestSoFar(run);
  // Stopped before a round came back (no candidates at all) is not the candidates' failure either.
  if (!best && run.stopRequested && (run.candidates === 0 || run.failedCandidates < run.candidates)) {
    throw new SearchFailure('the search was stopped before any candidate was scored, so there is no best noise');
  }
  if (!best) throw noWinner(run);
  const final = finalCandidate(plan, best);
  if (!final) return { run: finish(run, best, best.scores, algorithmOf(plan).lineage(plan, best.recipe), best.key), batches: [] };
  const finalRun: RunState = { ...run, phase: 'final', round: run.round + 1, inFlight: [final], inFlightVerified: true, inFlightKeys: 'state' };
  return { run: finalRun, batches: toBatches(plan, [wire(final)], true) };
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

/** A scored candidate costs what it proposed; a failed one what the server did for it before failing, no more. */
function chargedNfe(run: RunState, e: Evaluated): number {
  const cost = candidateNfe(e.candidate, run.plan.sigmaMax);
  return e.outcome.error ? Math.min(cost, Math.max(0, e.outcome.nfeLogical)) : cost;
}

/** Hands the outcomes of every batch of the round back; outcome order does not matter. */
export function finishRound(run: RunState, batches: BatchOutcome[]): RunState {
  const byId = new Map([...(run.resending?.settled ?? []), ...batches.flatMap((b) => b.outcomes)].map((o) => [o.id, o]));
  const resent = new Set(run.resending?.ids ?? []);
  const verifierCosts = addVerifierCosts(run.verifierCosts, batches);
  // Outcomes recorded before servers measured denoising carry none: they count as 0.
  const denoiseSeconds = batches.reduce((sum, b) => sum + (b.denoiseSeconds ?? 0), run.denoiseSeconds ?? 0);
  const nfeExecuted = run.nfeExecuted + batches.flatMap((b) => b.outcomes).reduce((sum, o) => sum + o.nfeExecuted, 0);
  const lost = run.inFlight.filter((c) => c.base && !resent.has(c.id) && byId.get(c.id)?.error?.code === BASE_MISSING);
  if (lost.length > 0) {
    const settled = run.inFlight.filter((c) => !lost.includes(c)).map((c) => byId.get(c.id)).filter((o): o is CandidateOutcome => o !== undefined);
    return { ...run, verifierCosts, denoiseSeconds, nfeExecuted, resending: { settled, ids: lost.map((c) => c.id) } };
  }
  const evaluated: Evaluated[] = run.inFlight.map((candidate, i) => {
    const outcome = byId.get(candidate.id);
    if (!outcome) throw new SearchFailure(`no outcome came back for candidate ${candidate.id}`);
    const checked = run.inFlightVerified ? withScoreChecked(outcome, run.plan.spec.verifiers) : outcome;
    return { candidate, order: run.proposed + i, outcome: checked };
  });
  const failures = evaluated.filter((e) => e.outcome.error);
  const charged = evaluated.reduce((sum, e) => sum + chargedNfe(run, e), 0);
  const failedCharge = failures.reduce((sum, e) => sum + chargedNfe(run, e), 0);
  const settledRun = { ...run, resending: null, verifierCosts, denoiseSeconds, nfeExecuted };

  if (run.phase === 'final') {
    const { outcome } = evaluated[0];
    if (outcome.error) throw new SearchFailure(`the final generation failed: ${outcome.error.code}: ${outcome.error.message}`);
    const lineage = wholeLineage(run, evaluated[0].candidate);
    return finish({ ...settledRun, nfeFinal: charged }, bestSoFar(run)!, outcome.scores, lineage, outcome.key ?? '');
  }
  return {
    ...settledRun,
    algorithmState: algorithmOf(run.plan).observe(run.algorithmState, run.plan, evaluated),
    proposed: run.proposed + evaluated.length,
    inFlight: [],
    nfeSearch: run.nfeSearch + charged,
    nfeFailed: run.nfeFailed + failedCharge,
    candidates: run.candidates + evaluated.length,
    failedCandidates: run.failedCandidates + failures.length,
    firstFailure: run.firstFailure ?? failures[0]?.outcome.error ?? null,
  };
}

function finish(run: RunState, best: Ranked, finalScores: Record<string, number>, finalLineage: Lineage, finalKey: string): RunState {
  const done = { ...run, inFlight: [] };
  return { ...done, phase: 'done', result: buildResult(done, best, finalScores, finalLineage, finalKey) };
}

function buildResult(run: RunState, best: Ranked, finalScores: Record<string, number>, finalLineage: Lineage, finalKey: string): SearchResult {
  const { spec } = run.plan;
  const ensemble = spec.verifiers.length > 1;
  const verifierSeconds = Object.values(run.verifierCosts).reduce((sum, c) => sum + c.seconds, 0);
  const denoise = run.denoiseSeconds ?? 0;
  return {
    algorithm: spec.algorithm.name,
    verifiers: spec.verifiers,
    model: spec.model,
    condition: spec.condition,
    seed: spec.seed,
    budget: spec.budgetSeconds === undefined ? { nfe: spec.budgetNfe } : { nfe: spec.budgetNfe, seconds: spec.budgetSeconds },
    nfe: { search: run.nfeSearch, final: run.nfeFinal, total: run.nfeSearch + run.nfeFinal, executed: run.nfeExecuted, failed: run.nfeFailed },
    best: {
      score: ensemble ? best.value : finalScores[spec.verifiers[0]],
      scores: finalScores,
      searchScore: best.value,
      noise: finalLineage.noise,
      candidateId: best.id,
      lineage: finalLineage,
      key: finalKey,
    },
    candidates: run.candidates,
    failedCandidates: run.failedCandidates,
    rounds: run.round,
    stopped: run.stopRequested,
    verifierSeconds,
    verifierCosts: run.verifierCosts,
    seconds: {
      denoise,
      verifiers: Object.fromEntries(Object.entries(run.verifierCosts).map(([name, cost]) => [name, cost.seconds])),
      total: denoise + verifierSeconds,
    },
  };
}

export function progressOf(run: RunState): SearchProgress {
  const best = bestSoFar(run);
  return {
    phase: run.phase,
    round: run.round,
    nfeSpent: nfeSpent(run),
    budget: run.plan.spec.budgetNfe,
    secondsSpent: secondsSpent(run),
    ...(run.plan.spec.budgetSeconds !== undefined ? { budgetSeconds: run.plan.spec.budgetSeconds } : {}),
    candidates: run.candidates,
    failedCandidates: run.failedCandidates,
    best: best && { score: best.value, scores: best.scores, candidateId: best.id, noise: algorithmOf(run.plan).lineage(run.plan, best.recipe).noise },
    stopRequested: run.stopRequested,
  };
}

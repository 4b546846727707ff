// Drives the pure search core against a FakeServer, round by round, the way both drivers do, logging
// what each round proposed, sent and got back. Shared by the algorithm, failure and payload tests.
import assert from 'node:assert/strict';
import { packBatch, packOutcome, unpackBatch, unpackOutcome } from '../src/search/packing';
import { createRun, finishRound, startRound, type RunState, type SearchResult } from '../src/search/run';
import { deriveSeed } from '../src/search/seeds';
import { SpecError, type AlgorithmSpec, type SearchSpec } from '../src/search/spec';
import type { BatchOutcome, BatchRequest, Candidate, CandidateOutcome, Lineage, ModelInfo } from '../src/search/types';
import { FakeServer, type Scorer } from './fake-server';
import { gmmModelInfo } from './fixtures';

export const SIGMA_MAX = 80;
export const SIGMA_MIN = 0.002;
/** One Heun generation of 10 steps ending at sigma = 0: 2 * 10 - 1 NFEs. */
export const GEN = 19;

/** The embedded model's shape with the 10-step Heun default these tests count by hand, and fake verifiers. */
export const MODEL: ModelInfo = gmmModelInfo({
  sigmaMin: SIGMA_MIN,
  sigmaMax: SIGMA_MAX,
  defaultSolver: 'heun',
  defaultSteps: 10,
  maxBatch: 8,
  maxConcurrency: 4,
  verifiers: ['v', 'a', 'b'].map((name) => ({ name, kind: 'fake', needsCondition: false, xpredSigma: 0 })),
});

export function spec(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'gmm', condition: {}, algorithm, verifiers: ['v'], budgetNfe: 1000, seed: 7, ...overrides };
}

const VERIFIER_SALT: Record<string, number> = { v: 11, a: 12, b: 13 };

/** A uniform in [0, 1) that depends on the whole lineage (noise, perturbations, every seed of its ops) and the verifier. */
export const hashScore: Scorer = (lineage, verifier) => {
  const parts = [
    ...lineage.noise.perturbations.flatMap((p) => [p.seed, Math.round(p.cosine * 1e6)]),
    ...lineage.ops.flatMap((op) => ('renoise' in op ? [op.renoise.seed] : [op.solve.seed ?? 0, op.solve.steps])),
  ];
  return deriveSeed(lineage.noise.seed, VERIFIER_SALT[verifier] ?? 99, ...parts) / 2 ** 53;
};

export interface RoundLog {
  phase: RunState['phase'];
  /** True for a round that sends again, whole, what a server lost the base of. */
  resend: boolean;
  candidates: Candidate[];
  verify: boolean;
  batches: BatchRequest[];
  outcomes: Map<string, CandidateOutcome>;
  /** The whole lineage the server resolved for each candidate it answered. */
  lineages: Map<string, Lineage>;
}

export type Order = 'as-is' | 'reversed' | 'shuffled';

/** A fixed permutation that depends on the length only, so reruns hand outcomes back the same way. */
function shuffled<T>(items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = deriveSeed(out.length, i) % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

function reorder(batches: BatchOutcome[], order: Order): BatchOutcome[] {
  if (order === 'as-is') return batches;
  if (order === 'reversed') return [...batches].reverse().map((b) => ({ ...b, outcomes: [...b.outcomes].reverse() }));
  return shuffled(batches).map((b) => ({ ...b, outcomes: shuffled(b.outcomes) }));
}

export interface DriveOptions {
  server?: FakeServer;
  scorer?: Scorer;
  order?: Order;
  log?: RoundLog[];
  /** Called on the run between startRound and finishRound (to stop it or change its budget). */
  during?: (run: RunState, round: number) => RunState;
  /** The server restarts (forgets every state) before these iterations of the loop. */
  restartBefore?: (iteration: number) => boolean;
  /** Give up after this many iterations: a search that does not end fails the test instead of hanging it. */
  maxIterations?: number;
  /** Sees the run after each finishRound. */
  after?: (run: RunState) => void;
  /** Send batches and outcomes through the packed JSON form they take through Temporal. */
  packed?: boolean;
}

/** A batch and its outcome as the Temporal driver sees them: packed, through JSON, unpacked. */
function throughTemporal(batch: BatchRequest, evaluate: (batch: BatchRequest) => BatchOutcome): BatchOutcome {
  const sent = unpackBatch(JSON.parse(JSON.stringify(packBatch(batch))));
  return unpackOutcome(JSON.parse(JSON.stringify(packOutcome(evaluate(sent), sent))), batch);
}

export function drive(run: RunState, options: DriveOptions = {}): RunState {
  const server = options.server ?? new FakeServer({ scorer: options.scorer ?? hashScore });
  const maxIterations = options.maxIterations ?? 10_000;
  let state = run;
  for (let iteration = 1; state.phase !== 'done'; iteration++) {
    assert.ok(iteration <= maxIterations, `the search did not end within ${maxIterations} rounds`);
    if (options.restartBefore?.(iteration)) server.forget();
    const resend = state.resending !== null;
    const started = startRound(state);
    const answered = server.evaluated.length;
    const outcomes = started.batches.map((b) => (options.packed ? throughTemporal(b, (sent) => server.evaluate(sent)) : server.evaluate(b)));
    const fresh = server.evaluated.slice(answered);
    options.log?.push({
      phase: started.run.phase,
      resend,
      candidates: started.run.inFlight,
      verify: started.run.inFlightVerified,
      batches: started.batches,
      outcomes: new Map(outcomes.flatMap((o) => o.outcomes).map((o) => [o.id, o])),
      lineages: new Map(fresh.map((e) => [e.wire.id, e.lineage])),
    });
    const inFlight = options.during ? options.during(started.run, iteration) : started.run;
    state = finishRound(inFlight, reorder(outcomes, options.order ?? 'as-is'));
    options.after?.(state);
  }
  return state;
}

export function result(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}, options: DriveOptions = {}, model = MODEL): SearchResult {
  return drive(createRun(spec(algorithm, overrides), model), options).result!;
}

export function problemsOf(make: () => unknown): string[] {
  try {
    make();
  } catch (error) {
    assert.ok(error instanceof SpecError, `expected a SpecError, got ${error}`);
    return error.problems;
  }
  assert.fail('expected the spec to be refused');
}

export function assertRefused(algorithm: AlgorithmSpec, pattern: RegExp, overrides: Partial<SearchSpec> = {}, model = MODEL): void {
  const problems = problemsOf(() => createRun(spec(algorithm, overrides), model));
  assert.ok(problems.some((p) => pattern.test(p)), `no problem matches ${pattern}: ${JSON.stringify(problems)}`);
}

export const score = (log: RoundLog, id: string, verifier = 'v'): number => log.outcomes.get(id)!.scores[verifier];

/** The rounds that proposed candidates (not the final generation, not a resend). */
export function searchRounds(log: RoundLog[]): RoundLog[] {
  return log.filter((r) => r.phase === 'search' && !r.resend);
}

/** Drives a search that is expected to fail: the error, and the last state before it (for its counters). */
export function driveToFailure(run: RunState, options: DriveOptions = {}): { run: RunState; error: Error } {
  let last = run;
  try {
    drive(run, { ...options, after: (r) => (last = r) });
  } catch (error) {
    return { run: last, error: error as Error };
  }
  assert.fail('expected the search to fail');
}

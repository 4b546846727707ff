// A stand-in for a model server, for tests of the pure search core: it keeps the states it evaluated by
// key (as a real server's cache does), resolves a candidate's base to the whole lineage, and scores that
// whole lineage with a pure function of it, as a real verifier would. It can forget every state (a
// restarted server) and fail candidates, so the core's recovery and failure paths can be driven by hand.
import { createHash } from 'node:crypto';
import type { BatchOutcome, BatchRequest, CandidateError, CandidateOutcome, Lineage, WireCandidate } from '../src/search/types';

export type Scorer = (lineage: Lineage, verifier: string) => number;

/** How a failing candidate fails: its error, and the logical NFEs the server says it spent first. */
export interface InjectedFailure {
  error: CandidateError;
  nfeLogical: number;
}

export interface FakeServerOptions {
  scorer: Scorer;
  /** Decides, per candidate (by id and whole lineage), whether and how it fails. */
  fail?: (id: string, lineage: Lineage) => InjectedFailure | null;
  /** The executed NFEs the server reports for a candidate: a marker the tests can sum, not a formula. */
  executed?: (id: string) => number;
}

export interface EvaluatedCandidate {
  wire: WireCandidate;
  lineage: Lineage;
  outcome: CandidateOutcome;
}

function keyOf(lineage: Lineage): string {
  return createHash('sha256').update(JSON.stringify(lineage)).digest('base64url').slice(0, 22);
}

export class FakeServer {
  private readonly states = new Map<string, Lineage>();
  /** Every candidate this server answered, in order, with the whole lineage it resolved. */
  readonly evaluated: EvaluatedCandidate[] = [];
  readonly requests: BatchRequest[] = [];

  constructor(private readonly options: FakeServerOptions) {}

  /** A restarted server: every base is gone. */
  forget(): void {
    this.states.clear();
  }

  private resolve(candidate: WireCandidate): Lineage | null {
    if (!candidate.base) return candidate.lineage;
    const base = this.states.get(candidate.base.key);
    if (!base) return null;
    const added = candidate.lineage.noise.perturbations;
    if (added.length > 0) {
      if (base.ops.length > 0) throw new Error(`${candidate.id}: perturbations on a base state`);
      return { noise: { seed: base.noise.seed, perturbations: [...base.noise.perturbations, ...added] }, ops: candidate.lineage.ops };
    }
    return { noise: base.noise, ops: [...base.ops, ...candidate.lineage.ops] };
  }

  evaluate(batch: BatchRequest): BatchOutcome {
    this.requests.push(batch);
    const outcomes = batch.candidates.map((candidate): CandidateOutcome => {
      const lineage = this.resolve(candidate);
      const executed = this.options.executed?.(candidate.id) ?? 0;
      if (!lineage) {
        const outcome = { id: candidate.id, scores: {}, nfeLogical: 0, nfeExecuted: 0, error: { code: 'NOT_FOUND', message: 'base: not held by this server' } };
        return outcome;
      }
      const key = keyOf(lineage);
      const noiseKey = keyOf({ noise: lineage.noise, ops: [] });
      this.states.set(key, lineage);
      this.states.set(noiseKey, { noise: lineage.noise, ops: [] });
      const failure = this.options.fail?.(candidate.id, lineage) ?? null;
      const outcome: CandidateOutcome = failure
        ? { id: candidate.id, scores: {}, nfeLogical: failure.nfeLogical, nfeExecuted: executed, error: failure.error, key, noiseKey }
        : {
            id: candidate.id,
            scores: Object.fromEntries(batch.verifiers.map((v) => [v, this.options.scorer(lineage, v)])),
            nfeLogical: 0,
            nfeExecuted: executed,
            key,
            noiseKey,
          };
      this.evaluated.push({ wire: candidate, lineage, outcome });
      return outcome;
    });
    return {
      serverId: 'fake',
      verifierTimings: batch.verifiers.map((verifier) => ({ verifier, calls: batch.candidates.length, seconds: 0.001 })),
      outcomes,
    };
  }

  /** The whole lineage this server resolved for a candidate id (the last time it answered it). */
  lineageOf(id: string): Lineage {
    const found = [...this.evaluated].reverse().find((e) => e.wire.id === id);
    if (!found) throw new Error(`candidate ${id} was never evaluated`);
    return found.lineage;
  }
}

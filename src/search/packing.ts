// Batches and their outcomes as they travel through Temporal, where every byte lands in a workflow's
// history: a batch's candidates become rows of a table that name shared ops by index (seeds apart), and
// outcomes become columns holding only what the run core reads: scores, executed NFEs, the one key the
// algorithm keeps, and for a failed candidate its error and the logical NFEs it spent. A round of 64 FK
// particles costs a few KB instead of tens. Unpacking gives back what the core needs (a score that JSON
// cannot carry, NaN or infinite, comes back NaN, which the core treats as the candidate's error either
// way). Pure, for workflows and activities.
import type { BatchOutcome, BatchRequest, CandidateOutcome, Condition, KeyKind, Op, Perturbation, RenoiseOp, VerifierTiming, WireCandidate } from './types';

/** An op of the batch: an index into `ops`, or [index, seed] for an op whose seed was taken out. */
export type PackedOpRef = number | [number, number];

/** [id, base (an index into `bases`, or -1), flags, noise seed, perturbations as seed, cosine, seed, cosine..., ops]. */
export type PackedRow = [string, number, number, number, number[], PackedOpRef[]];

const SCORE_XPRED = 1;
const BASE_XPRED = 2;

export interface PackedBatch {
  model: string;
  condition: Condition;
  verifiers: string[];
  returnSamples?: boolean;
  keys?: KeyKind;
  /** The batch's distinct ops, seeds taken out. */
  ops: Op[];
  /** The batch's distinct base keys: zero-order's neighbours, or the M perturbations of a path, share one. */
  bases: string[];
  rows: PackedRow[];
  /** Whose batch this is, for the worker's metrics only (src/metrics): servers never see it. */
  labels?: { algorithm: string; phase: 'search' | 'final' };
}

export interface PackedOutcome {
  /** Per verifier of the batch (in its order), each candidate's score; null where it has none. */
  scores: Array<Array<number | null>>;
  nfeExecuted: number[];
  /** The key the batch asked for (its final state's, or its noise's), per candidate; absent for none. */
  keys?: string[];
  /** [row, code, message, logical NFEs spent before failing] for each candidate that failed. */
  errors: Array<[number, string, string, number]>;
  samples?: Array<number[] | null>;
  /** [verifier (its index in the batch's verifiers, or its name), calls, seconds]. */
  timings: Array<[number | string, number, number]>;
  /** The batch's share of the server's denoising seconds; absent when none was measured (or recorded before it was). */
  denoise?: number;
}

function withoutSeed(op: Op): { template: Op; seed: number | undefined } {
  if ('solve' in op) {
    const { seed, ...solve } = op.solve;
    return { template: { solve }, seed };
  }
  const { seed, ...renoise } = op.renoise;
  return { template: { renoise: renoise as RenoiseOp }, seed };
}

function withSeed(template: Op, seed: number | undefined): Op {
  if ('solve' in template) return { solve: seed === undefined ? { ...template.solve } : { ...template.solve, seed } };
  return { renoise: { ...template.renoise, seed: seed! } };
}

/** A table of distinct values, each named by its index. */
function table<T>(): { values: T[]; indexOf(value: T, text: string): number } {
  const values: T[] = [];
  const index = new Map<string, number>();
  return {
    values,
    indexOf(value, text) {
      let i = index.get(text);
      if (i === undefined) {
        i = values.length;
        values.push(value);
        index.set(text, i);
      }
      return i;
    },
  };
}

export function packBatch(batch: BatchRequest): PackedBatch {
  const ops = table<Op>();
  const bases = table<string>();
  const refOf = (op: Op): PackedOpRef => {
    const { template, seed } = withoutSeed(op);
    const i = ops.indexOf(template, JSON.stringify(template));
    return seed === undefined ? i : [i, seed];
  };
  const rows = batch.candidates.map((c): PackedRow => [
    c.id,
    c.base ? bases.indexOf(c.base.key, c.base.key) : -1,
    (c.scoreXpred ? SCORE_XPRED : 0) | (c.base?.xpred ? BASE_XPRED : 0),
    c.lineage.noise.seed,
    c.lineage.noise.perturbations.flatMap((p) => [p.seed, p.cosine]),
    c.lineage.ops.map(refOf),
  ]);
  const packed: PackedBatch = { model: batch.model, condition: batch.condition, verifiers: batch.verifiers, ops: ops.values, bases: bases.values, rows };
  if (batch.returnSamples) packed.returnSamples = true;
  if (batch.keys) packed.keys = batch.keys;
  return packed;
}

export function unpackBatch(packed: PackedBatch): BatchRequest {
  const candidates = packed.rows.map(([id, base, flags, seed, flat, refs]): WireCandidate => {
    const perturbations: Perturbation[] = [];
    for (let i = 0; i < flat.length; i += 2) perturbations.push({ seed: flat[i], cosine: flat[i + 1] });
    const ops = refs.map((ref) => (typeof ref === 'number' ? withSeed(packed.ops[ref], undefined) : withSeed(packed.ops[ref[0]], ref[1])));
    const candidate: WireCandidate = { id, lineage: { noise: { seed, perturbations }, ops }, scoreXpred: (flags & SCORE_XPRED) !== 0 };
    if (base >= 0) candidate.base = (flags & BASE_XPRED) !== 0 ? { key: packed.bases[base], xpred: true } : { key: packed.bases[base] };
    return candidate;
  });
  const batch: BatchRequest = { model: packed.model, condition: packed.condition, verifiers: packed.verifiers, candidates };
  if (packed.returnSamples) batch.returnSamples = true;
  if (packed.keys) batch.keys = packed.keys;
  return batch;
}

/** `outcome` answers `batch`: one outcome per candidate, matched by id. */
export function packOutcome(outcome: BatchOutcome, batch: BatchRequest): PackedOutcome {
  const byId = new Map(outcome.outcomes.map((o) => [o.id, o]));
  const ordered = batch.candidates.map((c) => {
    const o = byId.get(c.id);
    if (!o) throw new Error(`no outcome for candidate ${c.id}`);
    return o;
  });
  const kind = batch.keys ?? 'state';
  const packed: PackedOutcome = {
    scores: batch.verifiers.map((v) => ordered.map((o) => (v in o.scores && Number.isFinite(o.scores[v]) ? o.scores[v] : null))),
    nfeExecuted: ordered.map((o) => o.nfeExecuted),
    errors: ordered.flatMap((o, i): Array<[number, string, string, number]> => (o.error ? [[i, o.error.code, o.error.message, o.nfeLogical]] : [])),
    timings: outcome.verifierTimings.map((t): [number | string, number, number] => {
      const index = batch.verifiers.indexOf(t.verifier);
      return [index >= 0 ? index : t.verifier, t.calls, t.seconds];
    }),
  };
  if (outcome.denoiseSeconds) packed.denoise = outcome.denoiseSeconds;
  if (kind !== 'none') packed.keys = ordered.map((o) => (kind === 'state' ? o.key : o.noiseKey) ?? '');
  if (ordered.some((o) => o.sample)) packed.samples = ordered.map((o) => o.sample ?? null);
  return packed;
}

export function unpackOutcome(packed: PackedOutcome, batch: BatchRequest): BatchOutcome {
  const errors = new Map(packed.errors.map(([row, code, message, nfeLogical]) => [row, { error: { code, message }, nfeLogical }]));
  const kind = batch.keys ?? 'state';
  const outcomes = batch.candidates.map((c, i): CandidateOutcome => {
    const failed = errors.get(i);
    const scores: Record<string, number> = {};
    batch.verifiers.forEach((v, j) => {
      const score = packed.scores[j][i];
      // A missing score of a scored candidate was one JSON could not carry.
      if (score !== null) scores[v] = score;
      else if (!failed) scores[v] = Number.NaN;
    });
    // A scored candidate's logical NFEs are the orchestrator's own count: the server's is not carried.
    const outcome: CandidateOutcome = { id: c.id, scores: failed ? {} : scores, nfeLogical: failed?.nfeLogical ?? 0, nfeExecuted: packed.nfeExecuted[i] };
    if (failed) outcome.error = failed.error;
    const key = packed.keys?.[i];
    if (key) outcome[kind === 'noise' ? 'noiseKey' : 'key'] = key;
    const sample = packed.samples?.[i];
    if (sample) outcome.sample = sample;
    return outcome;
  });
  const verifierTimings: VerifierTiming[] = packed.timings.map(([verifier, calls, seconds]) => ({ verifier: typeof verifier === 'number' ? batch.verifiers[verifier] : verifier, calls, seconds }));
  return { outcomes, verifierTimings, denoiseSeconds: packed.denoise ?? 0 };
}

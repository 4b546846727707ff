// Batches and their outcomes as they travel through Temporal, where every byte lands in a workflow's
// history: a batch's candidates become rows of a table that name shared ops by index (seeds apart), and
// outcomes become columns, so a round of 64 particles costs a few KB instead of tens. Lossless for what
// a search uses: unpacking gives back what was packed (a score that JSON cannot carry, NaN or infinite,
// comes back NaN, which the run core treats as the candidate's error either way); noise keys come back
// only when the batch asked for them. Pure, for workflows and activities.
import type { BatchOutcome, BatchRequest, CandidateOutcome, Condition, Op, Perturbation, RenoiseOp, VerifierTiming, WireCandidate } from './types';

/** An op of the batch: an index into `ops`, or [index, seed] for an op whose seed was taken out. */
export type PackedOpRef = number | [number, number];

/** [id, base key or '', flags, noise seed, perturbations as seed, cosine, seed, cosine..., ops]. */
export type PackedRow = [string, string, number, number, number[], PackedOpRef[]];

const SCORE_XPRED = 1;
const BASE_XPRED = 2;

export interface PackedBatch {
  model: string;
  condition: Condition;
  verifiers: string[];
  returnSamples?: boolean;
  noiseKeys?: boolean;
  /** The batch's distinct ops, seeds taken out. */
  ops: Op[];
  rows: PackedRow[];
}

export interface PackedOutcome {
  /** Per verifier of the batch (in its order), each candidate's score; null where it has none. */
  scores: Array<Array<number | null>>;
  nfeLogical: number[];
  nfeExecuted: number[];
  keys: string[];
  /** Only when the batch asked for them. */
  noiseKeys?: string[];
  /** [row, code, message] for each candidate that failed. */
  errors: Array<[number, string, string]>;
  samples?: Array<number[] | null>;
  verifierTimings: VerifierTiming[];
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

export function packBatch(batch: BatchRequest): PackedBatch {
  const ops: Op[] = [];
  const index = new Map<string, number>();
  const refOf = (op: Op): PackedOpRef => {
    const { template, seed } = withoutSeed(op);
    const text = JSON.stringify(template);
    let i = index.get(text);
    if (i === undefined) {
      i = ops.length;
      ops.push(template);
      index.set(text, i);
    }
    return seed === undefined ? i : [i, seed];
  };
  const rows = batch.candidates.map((c): PackedRow => [
    c.id,
    c.base?.key ?? '',
    (c.scoreXpred ? SCORE_XPRED : 0) | (c.base?.xpred ? BASE_XPRED : 0),
    c.lineage.noise.seed,
    c.lineage.noise.perturbations.flatMap((p) => [p.seed, p.cosine]),
    c.lineage.ops.map(refOf),
  ]);
  const packed: PackedBatch = { model: batch.model, condition: batch.condition, verifiers: batch.verifiers, ops, rows };
  if (batch.returnSamples) packed.returnSamples = true;
  if (batch.noiseKeys) packed.noiseKeys = true;
  return packed;
}

export function unpackBatch(packed: PackedBatch): BatchRequest {
  const candidates = packed.rows.map(([id, key, flags, seed, flat, refs]): WireCandidate => {
    const perturbations: Perturbation[] = [];
    for (let i = 0; i < flat.length; i += 2) perturbations.push({ seed: flat[i], cosine: flat[i + 1] });
    const ops = refs.map((ref) => (typeof ref === 'number' ? withSeed(packed.ops[ref], undefined) : withSeed(packed.ops[ref[0]], ref[1])));
    const candidate: WireCandidate = { id, lineage: { noise: { seed, perturbations }, ops }, scoreXpred: (flags & SCORE_XPRED) !== 0 };
    if (key) candidate.base = (flags & BASE_XPRED) !== 0 ? { key, xpred: true } : { key };
    return candidate;
  });
  const batch: BatchRequest = { model: packed.model, condition: packed.condition, verifiers: packed.verifiers, candidates };
  if (packed.returnSamples) batch.returnSamples = true;
  if (packed.noiseKeys) batch.noiseKeys = true;
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
  const packed: PackedOutcome = {
    scores: batch.verifiers.map((v) => ordered.map((o) => (v in o.scores && Number.isFinite(o.scores[v]) ? o.scores[v] : null))),
    nfeLogical: ordered.map((o) => o.nfeLogical),
    nfeExecuted: ordered.map((o) => o.nfeExecuted),
    keys: ordered.map((o) => o.key ?? ''),
    errors: ordered.flatMap((o, i): Array<[number, string, string]> => (o.error ? [[i, o.error.code, o.error.message]] : [])),
    verifierTimings: outcome.verifierTimings,
  };
  if (batch.noiseKeys) packed.noiseKeys = ordered.map((o) => o.noiseKey ?? '');
  if (ordered.some((o) => o.sample)) packed.samples = ordered.map((o) => o.sample ?? null);
  return packed;
}

export function unpackOutcome(packed: PackedOutcome, batch: BatchRequest): BatchOutcome {
  const errors = new Map(packed.errors.map(([row, code, message]) => [row, { code, message }]));
  const outcomes = batch.candidates.map((c, i): CandidateOutcome => {
    const error = errors.get(i);
    const scores: Record<string, number> = {};
    batch.verifiers.forEach((v, j) => {
      const score = packed.scores[j][i];
      // A missing score of a scored candidate was one JSON could not carry.
      if (score !== null) scores[v] = score;
      else if (!error) scores[v] = Number.NaN;
    });
    const outcome: CandidateOutcome = { id: c.id, scores: error ? {} : scores, nfeLogical: packed.nfeLogical[i], nfeExecuted: packed.nfeExecuted[i] };
    if (error) outcome.error = error;
    if (packed.keys[i]) outcome.key = packed.keys[i];
    if (packed.noiseKeys?.[i]) outcome.noiseKey = packed.noiseKeys[i];
    const sample = packed.samples?.[i];
    if (sample) outcome.sample = sample;
    return outcome;
  });
  return { outcomes, verifierTimings: packed.verifierTimings };
}

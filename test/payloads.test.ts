// Nothing a search sends through a workflow grows with its length: batches carry bases by key and new ops
// only, and the state carried over a continue-as-new keeps recipes, not lineages. Temporal refuses
// payloads over 2 MB; the target here is 256 KB at the paper's sizes (FK with k = 64 over 250 steps used
// to send 3 MB batches and carry a 3.1 MB state).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRun, MAX_BATCH_BYTES, type RunState } from '../src/search/run';
import type { AlgorithmSpec } from '../src/search/spec';
import { drive, MODEL, spec, type RoundLog } from './drive';

const KB = 1024;
const bytes = (value: unknown) => JSON.stringify(value).length;

function largest(log: RoundLog[], from: number, to: number): number {
  return Math.max(...log.slice(from, to).flatMap((r) => r.batches.map(bytes)));
}

function measured(algorithm: AlgorithmSpec, budgetNfe: number, steps?: number) {
  const log: RoundLog[] = [];
  let state = 0;
  const model = { ...MODEL, maxBatch: 64 };
  const done = drive(createRun(spec(algorithm, { budgetNfe, ...(steps ? { searchSampler: { steps } } : {}) }), model), { log, after: (run: RunState) => (state = Math.max(state, bytes(run))) });
  return { log, state, result: bytes(done.result) };
}

describe('payloads that do not grow with the length of a search', () => {
  it('FK steering, k = 64 over 250 steps: batches as small at the end as at the start, the state far under 256 KB', () => {
    const { log, state, result } = measured({ name: 'fk', k: 64, resampleEvery: 2 }, 64 * 250, 250);
    assert.equal(log.filter((r) => r.batches.length > 0).length, 125);
    const early = largest(log, 1, 3);
    const late = largest(log, 120, 125);
    assert.ok(late <= early * 1.1, `a late batch (${late} B) is no bigger than an early one (${early} B)`);
    assert.ok(late < 24 * KB, `${late} B`);
    assert.ok(state < 64 * KB, `the run state is ${state} B`);
    assert.ok(result < 32 * KB, `the result is ${result} B`);
  });

  it('zero-order search, 50 moves: a neighbour is its pivot by key plus one perturbation', () => {
    const { log, state } = measured({ name: 'zero-order', n: 8, t: 0.99 }, 19 * (2 + 8 * 60));
    const sizes = log.filter((r) => r.phase === 'search' && r.candidates.length === 8).map((r) => Math.max(...r.batches.map(bytes)));
    assert.ok(Math.max(...sizes) <= Math.min(...sizes) * 1.05, `neighbour batches range ${Math.min(...sizes)}..${Math.max(...sizes)} B`);
    assert.ok(state < 64 * KB, `the run state is ${state} B`);
  });

  it('zero-order search keeps a move as two small numbers, not a spelled-out perturbation', () => {
    // A score that grows with the walk's length: the pivot moves at every one of the 200 iterations.
    const moves = 200;
    const run = drive(createRun(spec({ name: 'zero-order', n: 2 }, { budgetNfe: 19 * (2 + 2 * moves) }), MODEL), { scorer: (lineage) => lineage.noise.perturbations.length });
    const pivot = (run.algorithmState as { pivot: { recipe: unknown } }).pivot;
    assert.equal(run.result!.best.noise.perturbations.length, moves);
    // "12345,1," is at most 8 characters a move; a perturbation {"seed":<16 digits>,"cosine":0.9} is about 40.
    assert.ok(bytes(pivot.recipe) <= 40 + 8 * moves, `${bytes(pivot.recipe)} B for ${moves} moves`);
  });

  it('random search with one verifier keeps one scored candidate, however many it evaluates', () => {
    const small = measured({ name: 'random' }, 19 * 20).state;
    const large = measured({ name: 'random' }, 19 * 2000).state;
    assert.ok(large <= small + 200, `${small} B at N = 19, ${large} B at N = 1999`);
  });

  it('keeps every batch under MAX_BATCH_BYTES, even when whole lineages are sent again', () => {
    const log: RoundLog[] = [];
    drive(createRun(spec({ name: 'fk', k: 64, resampleEvery: 1 }, { budgetNfe: 64 * 400, searchSampler: { steps: 400 } }), { ...MODEL, maxBatch: 64 }), { log, restartBefore: (i) => i === 390 });
    const resend = log.find((r) => r.resend)!;
    assert.ok(resend.batches.length > 1, 'the whole lineages did not fit one batch');
    for (const batch of log.flatMap((r) => r.batches)) assert.ok(bytes(batch) <= MAX_BATCH_BYTES + 2 * KB, `${bytes(batch)} B`);
  });
});

// The packed form of batches and outcomes that travels through Temporal: lossless both ways, and several
// times smaller than plain JSON for the rounds that dominate a history.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRun } from '../src/search/run';
import { packBatch, packOutcome, unpackBatch, unpackOutcome } from '../src/search/packing';
import type { BatchOutcome, BatchRequest } from '../src/search/types';
import { drive, MODEL, spec, type RoundLog } from './drive';

const bytes = (value: unknown) => JSON.stringify(value).length;

/**
 * What the packed form promises to bring back: everything but a scored candidate's logical NFEs (the core
 * counts those itself) and the key the batch did not ask for.
 */
function whatCrosses(outcome: BatchOutcome, batch: BatchRequest): BatchOutcome {
  const kind = batch.keys ?? 'state';
  return {
    verifierTimings: outcome.verifierTimings,
    // Outcomes recorded before servers measured denoising carry none: 0.
    denoiseSeconds: outcome.denoiseSeconds ?? 0,
    outcomes: outcome.outcomes.map(({ key, noiseKey, ...o }) => ({
      ...o,
      nfeLogical: o.error ? o.nfeLogical : 0,
      ...(kind === 'state' && key ? { key } : {}),
      ...(kind === 'noise' && noiseKey ? { noiseKey } : {}),
    })),
  };
}

function rounds(algorithm: Parameters<typeof spec>[0], budgetNfe: number, steps?: number): RoundLog[] {
  const log: RoundLog[] = [];
  drive(createRun(spec(algorithm, { budgetNfe, verifiers: ['a', 'b'], ...(steps ? { searchSampler: { steps } } : {}) }), { ...MODEL, maxBatch: 64 }), { log, restartBefore: (i) => i === 3 });
  return log;
}

describe('packing batches and outcomes for Temporal', () => {
  const logs = [
    rounds({ name: 'random', n: 40 }, 2000),
    rounds({ name: 'zero-order', n: 8, restart: true }, 2000),
    rounds({ name: 'paths', n: 4, m: 8 }, 2000),
    rounds({ name: 'fk', k: 16, resampleEvery: 2 }, 16 * 40, 40),
  ];

  it('gives back exactly the batches and outcomes packed, bases, x-prediction flags, seeds and errors included', () => {
    let checked = 0;
    for (const log of logs) {
      for (const round of log) {
        for (const batch of round.batches) {
          assert.deepEqual(unpackBatch(JSON.parse(JSON.stringify(packBatch(batch)))), batch);
          const outcome: BatchOutcome = {
            outcomes: batch.candidates.map((c) => round.outcomes.get(c.id)!),
            verifierTimings: [{ verifier: 'a', calls: batch.candidates.length, seconds: 0.5 }],
            ...(checked % 2 === 0 ? { denoiseSeconds: batch.candidates.length / 7 } : {}),
          };
          assert.deepEqual(unpackOutcome(JSON.parse(JSON.stringify(packOutcome(outcome, batch))), batch), whatCrosses(outcome, batch));
          checked++;
        }
      }
    }
    assert.ok(checked > 20);
    assert.ok(logs.some((log) => log.some((r) => [...r.outcomes.values()].some((o) => o.error?.code === 'NOT_FOUND'))), 'errors were packed too');
    assert.deepEqual(logs.map((log) => [...new Set(log.flatMap((r) => r.batches.map((b) => b.keys ?? 'state')))].sort()), [['none', 'state'], ['noise', 'state'], ['state'], ['state']], 'random keeps no key, zero-order noises, paths and FK states, every final generation its state');
  });

  it('keeps a sample, a failure and a score JSON cannot carry', () => {
    const batch: BatchRequest = {
      model: 'gmm',
      condition: { classLabel: 1, guidanceScale: 0 },
      verifiers: ['a'],
      returnSamples: true,
      keys: 'noise',
      candidates: [0, 1, 2].map((i) => ({ id: `c${i}`, lineage: { noise: { seed: i, perturbations: [{ seed: 9, cosine: 0.25 }] }, ops: [{ renoise: { sigmaFrom: 1, sigmaTo: 2, seed: 4 + i } }] }, scoreXpred: false })),
    };
    assert.deepEqual(unpackBatch(JSON.parse(JSON.stringify(packBatch(batch)))), batch);
    const outcome: BatchOutcome = {
      outcomes: [
        { id: 'c0', scores: { a: -0.5 }, nfeLogical: 3, nfeExecuted: 0, sample: [0.25, -1], key: 'k0', noiseKey: 'n0' },
        { id: 'c1', scores: {}, nfeLogical: 1, nfeExecuted: 1, error: { code: 'INTERNAL', message: 'verifier failed' } },
        { id: 'c2', scores: { a: Number.POSITIVE_INFINITY }, nfeLogical: 3, nfeExecuted: 3 },
      ],
      verifierTimings: [],
    };
    const back = unpackOutcome(JSON.parse(JSON.stringify(packOutcome(outcome, batch))), batch);
    assert.deepEqual(back.outcomes.slice(0, 2), whatCrosses(outcome, batch).outcomes.slice(0, 2));
    assert.equal(back.outcomes[1].nfeLogical, 1, "a failed candidate's logical NFEs come back");
    assert.ok(Number.isNaN(back.outcomes[2].scores.a), 'a non-finite score stays one that cannot win');
  });

  it('packs an FK round of 64 particles in a third of its plain size', () => {
    const log = rounds({ name: 'fk', k: 64, resampleEvery: 2 }, 64 * 40, 40);
    const round = log[10];
    const batch = round.batches[0];
    const outcome = { outcomes: batch.candidates.map((c) => round.outcomes.get(c.id)!), verifierTimings: [] };
    const plain = bytes(batch) + bytes(outcome);
    const packed = bytes(packBatch(batch)) + bytes(packOutcome(outcome, batch));
    assert.ok(packed * 3 < plain, `packed ${packed} B, plain ${plain} B`);
  });
});

// The pure driver core on hand-made scores: NFE accounting, selection, validation and seeds. No server,
// no Temporal; expected values are worked out by hand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { candidateNfe, solveNfe } from '../src/search/nfe';
import { createRun } from '../src/search/run';
import { deriveSeed } from '../src/search/seeds';
import { averagedRanks, bestOf, rankPool, topK } from '../src/search/selection';
import { SpecError, type SearchSpec } from '../src/search/spec';
import type { Lineage } from '../src/search/types';
import { drive, GEN, MODEL } from './drive';
import { FakeServer } from './fake-server';
import type { Scored } from '../src/search/algorithm';

const CLASSIFIER_MODEL = { ...MODEL, verifiers: [{ name: 'gmm-classifier', kind: 'supervised', needsCondition: true, xpredSigma: 0 }] };

function spec(overrides: Partial<SearchSpec> = {}): SearchSpec {
  return {
    model: 'gmm',
    condition: { classLabel: 3 },
    algorithm: { name: 'random' },
    verifiers: ['gmm-classifier'],
    budgetNfe: 200,
    seed: 7,
    ...overrides,
  };
}

/** A score that is a pure function of the noise seed, as a real verifier's would be of the noise. */
const bySeed = (lineage: Lineage) => (lineage.noise.seed % 1000) / 1000;

describe('NFE accounting', () => {
  it('counts Euler and Euler-ancestral as one NFE a step and Heun as two, less one for a last step to sigma = 0', () => {
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0, solver: 'euler', steps: 10 }), 10);
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0, solver: 'euler_ancestral', steps: 10, seed: 3 }), 10);
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0, solver: 'heun', steps: 10 }), 19);
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0.5, solver: 'heun', steps: 10 }), 20);
  });

  it('adds one NFE for an x-prediction of a state above sigma = 0, and takes one off a solve that starts from an x-predicted base', () => {
    const noise = { seed: 1, perturbations: [] };
    const ops = [{ solve: { sigmaFrom: 80, sigmaTo: 0.5, solver: 'euler' as const, steps: 4 } }];
    assert.equal(candidateNfe({ id: 'a', lineage: { noise, ops }, scoreXpred: true }, 80), 5);
    assert.equal(candidateNfe({ id: 'a', lineage: { noise, ops }, scoreXpred: false }, 80), 4);
    const onward = [{ solve: { sigmaFrom: 0.5, sigmaTo: 0, solver: 'euler' as const, steps: 3 } }];
    assert.equal(candidateNfe({ id: 'b', base: { key: 'k', xpred: true }, lineage: { noise, ops: onward }, scoreXpred: false }, 80), 2);
    assert.equal(candidateNfe({ id: 'b', base: { key: 'k' }, lineage: { noise, ops: onward }, scoreXpred: false }, 80), 3);
    const renoiseFirst = [{ renoise: { sigmaFrom: 0.5, sigmaTo: 1, seed: 2 } }, ...onward.map((o) => ({ solve: { ...o.solve, sigmaFrom: 1 } }))];
    assert.equal(candidateNfe({ id: 'c', base: { key: 'k', xpred: true }, lineage: { noise, ops: renoiseFirst }, scoreXpred: false }, 80), 3, 'a renoise first: nothing to reuse');
  });

  it('never exceeds the budget and spends what it can on whole candidates', () => {
    for (const budgetNfe of [38, 39, 56, 57, 200, 1999, 2000]) {
      const result = drive(createRun(spec({ budgetNfe }), CLASSIFIER_MODEL), { scorer: bySeed }).result!;
      const candidates = Math.floor((budgetNfe - 19) / 19);
      assert.equal(result.candidates, candidates, `budget ${budgetNfe}`);
      assert.deepEqual({ ...result.nfe, executed: 0 }, { search: 19 * candidates, final: 19, total: 19 * (candidates + 1), executed: 0, failed: 0 });
      assert.ok(budgetNfe - result.nfe.total < 19, 'left enough unspent for another candidate');
    }
  });

  it('sums the executed NFEs the servers report, whatever the logical count', () => {
    const server = new FakeServer({ scorer: bySeed, executed: (id) => (id === 'final' ? 0 : 7) });
    const result = drive(createRun(spec({ budgetNfe: 400 }), CLASSIFIER_MODEL), { server }).result!;
    assert.equal(result.nfe.executed, 20 * 7);
    assert.equal(result.nfe.total, 21 * 19);
  });

  it('sizes random search by N when given', () => {
    const result = drive(createRun(spec({ algorithm: { name: 'random', n: 5 }, budgetNfe: 2000 }), CLASSIFIER_MODEL), { scorer: bySeed }).result!;
    assert.equal(result.candidates, 5);
    assert.equal(result.nfe.total, 6 * GEN);
  });
});

describe('selection', () => {
  const scored = (order: number, score: number, more: Record<string, number> = {}): Scored => ({
    id: String(order),
    order,
    scores: { v: score, ...more },
    key: '',
    noiseKey: '',
    sigma: 0,
    recipe: order,
  });

  it('prefers the higher score and breaks ties toward the earlier proposal', () => {
    assert.equal(bestOf([scored(1, 1), scored(5, 2)], ['v'])!.order, 5);
    assert.equal(bestOf([scored(5, 1), scored(1, 1)], ['v'])!.order, 1);
    assert.equal(bestOf([scored(3, 1), scored(2, 1), scored(4, 0.5)], ['v'])!.order, 2);
    assert.deepEqual(topK([scored(3, 1), scored(2, 1), scored(4, 0.5), scored(1, 3)], ['v'], 3).map((r) => r.order), [1, 2, 3]);
  });

  it('ranks an ensemble by the mean of per-verifier ranks, ties averaged', () => {
    assert.deepEqual(averagedRanks([3, 1, 3, 2]), [3.5, 1, 3.5, 2]);
    // 0: best for v, worst for w; 1: second for v, best for w; 2: worst for v, second for w.
    const pool = [scored(0, 10, { w: 0 }), scored(1, 5, { w: 6 }), scored(2, 0, { w: 5 })];
    assert.deepEqual(rankPool(pool, ['v', 'w']).map((r) => r.value), [2, 2.5, 1.5]);
    assert.equal(bestOf(pool, ['v', 'w'])!.order, 1);
  });

  it('picks the true maximum of a random search and reports its noise', () => {
    const done = drive(createRun(spec({ budgetNfe: 400 }), CLASSIFIER_MODEL), { scorer: bySeed });
    const seeds = Array.from({ length: 20 }, (_, i) => deriveSeed(7, 1, i));
    const bestSeed = seeds.reduce((a, b) => ((b % 1000) / 1000 > (a % 1000) / 1000 ? b : a));
    assert.equal(done.result!.best.noise.seed, bestSeed);
    assert.equal(done.result!.best.searchScore, (bestSeed % 1000) / 1000);
  });

  it('gives the same result whatever the batch size or round size', () => {
    const reference = drive(createRun(spec({ budgetNfe: 1000 }), CLASSIFIER_MODEL), { scorer: bySeed }).result!;
    for (const maxBatch of [1, 3, 64]) {
      for (const roundSize of [1, 7, 100]) {
        const run = createRun(spec({ budgetNfe: 1000, algorithm: { name: 'random', roundSize } }), { ...CLASSIFIER_MODEL, maxBatch });
        const result = drive(run, { scorer: bySeed, order: 'reversed' }).result!;
        assert.deepEqual(result.best, reference.best);
        assert.deepEqual(result.nfe, reference.nfe);
      }
    }
  });

  it('keeps one scored candidate for one verifier, so the state does not grow with N', () => {
    const run = drive(createRun(spec({ budgetNfe: 2000 }), CLASSIFIER_MODEL), { scorer: bySeed });
    assert.equal((run.algorithmState as { scored: unknown[] }).scored.length, 1);
  });
});

describe('spec validation', () => {
  it('refuses a budget too small for one candidate and says what would do', () => {
    assert.throws(() => createRun(spec({ budgetNfe: 37 }), CLASSIFIER_MODEL), (error: SpecError) => {
      assert.match(error.problems[0], /budget: 37 NFEs cannot pay for one candidate \(19 NFEs\) plus the final generation \(19 NFEs\), which costs 38 NFEs; use --budget 38 or more/);
      return true;
    });
  });

  it('lists every problem at once', () => {
    assert.throws(
      () => createRun(spec({ verifiers: ['nope'], condition: { classLabel: 12 }, seed: -1 }), CLASSIFIER_MODEL),
      (error: SpecError) => {
        assert.equal(error.problems.length, 3);
        assert.match(error.problems.join('\n'), /verifier: "nope" is not hosted.*gmm-classifier/);
        assert.match(error.problems.join('\n'), /class: 12 is not a class of model gmm; use a whole number from 0 to 9/);
        assert.match(error.problems.join('\n'), /seed: -1/);
        return true;
      },
    );
  });

  it('refuses an unknown algorithm, an N the budget cannot pay for, and a stochastic search sampler', () => {
    assert.throws(() => createRun(spec({ algorithm: { name: 'annealing' } as never }), CLASSIFIER_MODEL), /algorithm: "annealing" is unknown; use one of random, zero-order, paths, fk/);
    assert.throws(() => createRun(spec({ algorithm: { name: 'random', n: 50 } }), CLASSIFIER_MODEL), /n: 50 noises cost 969 NFEs.*--n to 9/);
    assert.throws(
      () => createRun(spec({ searchSampler: { solver: 'euler_ancestral' } }), CLASSIFIER_MODEL),
      /searchSampler\.solver: "euler_ancestral" is not a deterministic solver of model gmm; use one of euler, heun/,
    );
  });

  it('takes guidance 0 (unconditional sampling) and refuses a negative one', () => {
    assert.doesNotThrow(() => createRun(spec({ condition: { classLabel: 3, guidanceScale: 0 } }), CLASSIFIER_MODEL));
    assert.throws(() => createRun(spec({ condition: { classLabel: 3, guidanceScale: -1 } }), CLASSIFIER_MODEL), /guidance: -1 must be a finite number >= 0/);
  });
});

describe('seeds', () => {
  it('derives distinct, stable, JSON-safe seeds', () => {
    const seeds = new Set(Array.from({ length: 10_000 }, (_, i) => deriveSeed(7, 1, i)));
    assert.equal(seeds.size, 10_000);
    for (const s of seeds) assert.ok(Number.isSafeInteger(s) && s >= 0);
    assert.equal(deriveSeed(7, 1, 0), deriveSeed(7, 1, 0));
    assert.notEqual(deriveSeed(7, 1, 0), deriveSeed(8, 1, 0));
  });
});

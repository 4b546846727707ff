// The pure algorithms and the generic driver core, on hand-made scores: no server, no Temporal.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { candidateNfe, solveNfe } from '../src/search/nfe';
import { createRun, finishRound, startRound, type RunState } from '../src/search/run';
import { deriveSeed } from '../src/search/seeds';
import { averagedRanks, bestOf, rankPool, topK } from '../src/search/selection';
import { SpecError, type SearchSpec } from '../src/search/spec';
import type { BatchOutcome, BatchRequest } from '../src/search/types';
import { gmmModelInfo } from './fixtures';

const MODEL = gmmModelInfo({ maxBatch: 8, maxConcurrency: 4, verifiers: [{ name: 'gmm-classifier', kind: 'supervised', needsCondition: true, xpredSigma: 0 }] });

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

/** A fake evaluator whose score is a pure function of the noise seed, as a real verifier's would be. */
function evaluate(batch: BatchRequest, scoreOf: (seed: number) => number = (seed) => (seed % 1000) / 1000): BatchOutcome {
  return {
    serverId: 'fake',
    verifierTimings: [{ verifier: batch.verifiers[0], calls: batch.candidates.length, seconds: 0.001 }],
    outcomes: batch.candidates.map((c) => ({
      id: c.id,
      scores: { [batch.verifiers[0]]: scoreOf(c.lineage.noise.seed) },
      nfeLogical: candidateNfe(c, MODEL.sigmaMax),
      nfeExecuted: candidateNfe(c, MODEL.sigmaMax),
    })),
  };
}

function drive(run: RunState, evaluator = evaluate, reverseOrder = false): RunState {
  let state = run;
  while (state.phase !== 'done') {
    const round = startRound(state);
    const outcomes = round.batches.map((b) => evaluator(b));
    state = finishRound(round.run, reverseOrder ? outcomes.reverse() : outcomes);
  }
  return state;
}

describe('NFE accounting', () => {
  it('counts Euler as one NFE a step and Heun as two, less one for a last step to sigma = 0', () => {
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0, solver: 'euler', steps: 10 }), 10);
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0, solver: 'heun', steps: 10 }), 19);
    assert.equal(solveNfe({ sigmaFrom: 80, sigmaTo: 0.5, solver: 'heun', steps: 10 }), 20);
  });

  it('adds one NFE for an x-prediction of a state above sigma = 0', () => {
    const lineage = { noise: { seed: 1, perturbations: [] }, ops: [{ solve: { sigmaFrom: 80, sigmaTo: 0.5, solver: 'euler' as const, steps: 4 } }] };
    assert.equal(candidateNfe({ id: 'a', lineage, scoreXpred: true }, 80), 5);
    assert.equal(candidateNfe({ id: 'a', lineage, scoreXpred: false }, 80), 4);
  });

  it('never exceeds the budget and spends what it can on whole candidates', () => {
    for (const budgetNfe of [38, 39, 56, 57, 200, 1999, 2000]) {
      const done = drive(createRun(spec({ budgetNfe }), MODEL));
      const result = done.result!;
      assert.ok(result.nfe.total <= budgetNfe, `budget ${budgetNfe}: spent ${result.nfe.total}`);
      assert.equal(result.nfe.final, 19);
      assert.equal(result.candidates, Math.floor((budgetNfe - 19) / 19));
      assert.equal(result.nfe.search, result.candidates * 19);
      assert.ok(budgetNfe - result.nfe.total < 19, 'left enough unspent for another candidate');
    }
  });

  it('sizes random search by N when given', () => {
    const result = drive(createRun(spec({ algorithm: { name: 'random', n: 5 }, budgetNfe: 2000 }), MODEL)).result!;
    assert.equal(result.candidates, 5);
    assert.equal(result.nfe.total, 6 * 19);
  });
});

describe('selection', () => {
  const scored = (order: number, score: number, more: Record<string, number> = {}) => ({
    order,
    scores: { v: score, ...more },
    candidate: { id: String(order), lineage: { noise: { seed: order, perturbations: [] }, ops: [] }, scoreXpred: false },
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
    const ranked = rankPool(pool, ['v', 'w']);
    assert.deepEqual(ranked.map((r) => r.value), [2, 2.5, 1.5]);
    assert.equal(bestOf(pool, ['v', 'w'])!.order, 1);
  });

  it('picks the true maximum of a random search and reports its noise', () => {
    const done = drive(createRun(spec({ budgetNfe: 400 }), MODEL));
    const seeds = Array.from({ length: 20 }, (_, i) => deriveSeed(7, 1, i));
    const bestSeed = seeds.reduce((a, b) => ((b % 1000) / 1000 > (a % 1000) / 1000 ? b : a));
    assert.equal(done.result!.best.noise.seed, bestSeed);
    assert.equal(done.result!.best.searchScore, (bestSeed % 1000) / 1000);
  });

  it('gives the same result whatever the batch size, round size or outcome order', () => {
    const reference = drive(createRun(spec({ budgetNfe: 1000 }), MODEL)).result!;
    for (const maxBatch of [1, 3, 64]) {
      for (const roundSize of [1, 7, 100]) {
        const run = createRun(spec({ budgetNfe: 1000, algorithm: { name: 'random', roundSize } }), { ...MODEL, maxBatch });
        const result = drive(run, evaluate, true).result!;
        assert.deepEqual(result.best, reference.best);
        assert.deepEqual(result.nfe, reference.nfe);
      }
    }
  });

  it('lets a failed or non-finite candidate never win, and fails only when every candidate failed', () => {
    const poisoned = (batch: BatchRequest): BatchOutcome => {
      const out = evaluate(batch);
      if (batch.candidates[0].id === 'final') return out;
      out.outcomes = out.outcomes.map((o, i) =>
        i === 0 ? { ...o, scores: {}, error: { code: 'INVALID_ARGUMENT', message: 'bad' } } : i === 1 ? { ...o, scores: { 'gmm-classifier': Number.NaN } } : o,
      );
      return out;
    };
    const result = drive(createRun(spec({ budgetNfe: 400 }), MODEL), poisoned).result!;
    assert.equal(result.failedCandidates, 2 * Math.ceil(20 / 8));
    assert.ok(Number.isFinite(result.best.searchScore));
    const allFail = (batch: BatchRequest): BatchOutcome => ({
      ...evaluate(batch),
      outcomes: batch.candidates.map((c) => ({ id: c.id, scores: {}, nfeLogical: 0, nfeExecuted: 0, error: { code: 'INVALID_ARGUMENT', message: 'bad lineage' } })),
    });
    assert.throws(() => drive(createRun(spec({ budgetNfe: 400 }), MODEL), allFail), /every one of the 20 candidates failed.*bad lineage/);
  });
});

describe('spec validation', () => {
  it('refuses a budget too small for one candidate and says what would do', () => {
    assert.throws(() => createRun(spec({ budgetNfe: 37 }), MODEL), (error: SpecError) => {
      assert.match(error.problems[0], /budget: 37 NFEs cannot pay for one candidate \(19 NFEs\) plus the final generation \(19 NFEs\), which costs 38 NFEs; use --budget 38 or more/);
      return true;
    });
  });

  it('lists every problem at once', () => {
    assert.throws(
      () => createRun(spec({ verifiers: ['nope'], condition: { classLabel: 12 }, seed: -1 }), MODEL),
      (error: SpecError) => {
        assert.equal(error.problems.length, 3);
        assert.match(error.problems.join('\n'), /verifier: "nope" is not hosted.*gmm-classifier/);
        assert.match(error.problems.join('\n'), /class: 12 is not a class of model gmm; use a whole number from 0 to 9/);
        assert.match(error.problems.join('\n'), /seed: -1/);
        return true;
      },
    );
  });

  it('refuses an unknown algorithm and an N the budget cannot pay for', () => {
    assert.throws(() => createRun(spec({ algorithm: { name: 'annealing' } as never }), MODEL), /algorithm: "annealing" is unknown; use one of random, zero-order, paths, fk/);
    assert.throws(() => createRun(spec({ algorithm: { name: 'random', n: 50 } }), MODEL), /n: 50 noises cost 969 NFEs.*--n to 9/);
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

// Failed work is work: every algorithm, with every candidate failing, half of them failing, or only the
// ones that explore (zero-order's neighbours, the paths' perturbations) failing, ends within its budget,
// charges what the server spent on failed candidates, and fails with one clear message when nothing could
// be scored. NFE counts are worked out by hand in each test. The same paths against a real model server,
// through both drivers, are in test/faults.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRun } from '../src/search/run';
import type { AlgorithmSpec } from '../src/search/spec';
import type { Op } from '../src/search/types';
import { drive, driveToFailure, GEN, hashScore, MODEL, spec } from './drive';
import { FakeServer, type InjectedFailure } from './fake-server';

/** Fails the matching candidates after their ops ran, with the NFEs they cost, or before any work. */
function failing(match: (id: string) => boolean, stage: 'denoised' | 'refused', costs: (id: string) => number): FakeServer {
  return new FakeServer({
    scorer: hashScore,
    fail: (id): InjectedFailure | null =>
      match(id) ? { error: { code: 'INTERNAL', message: `injected ${stage}` }, nfeLogical: stage === 'denoised' ? costs(id) : 0 } : null,
  });
}

const everything = (id: string) => id !== 'final';
const odd = (id: string) => Number(id.split('-').at(-1)) % 2 === 1;

function expectNoWinner(algorithm: AlgorithmSpec, budgetNfe: number, server: FakeServer, message = /^every one of the \d+ candidates failed, so there is no best noise \(first failure: INTERNAL: injected/) {
  const { run, error } = driveToFailure(createRun(spec(algorithm, { budgetNfe }), MODEL), { server, maxIterations: 1_000 });
  assert.match(error.message, message);
  return run;
}

describe('failed work is charged and every search ends', () => {
  it('random search: all fail after denoising (charged), all refused (free), half fail', () => {
    // Budget 400: N = floor((400 - 19) / 19) = 20 candidates of 19 NFEs.
    const charged = expectNoWinner({ name: 'random' }, 400, failing(everything, 'denoised', () => GEN));
    assert.deepEqual([charged.candidates, charged.failedCandidates, charged.nfeSearch, charged.nfeFailed], [20, 20, 380, 380]);
    const refused = expectNoWinner({ name: 'random' }, 400, failing(everything, 'refused', () => GEN));
    assert.deepEqual([refused.candidates, refused.nfeSearch, refused.nfeFailed, refused.nfeProposed], [20, 0, 0, 380]);
    const half = drive(createRun(spec({ name: 'random' }, { budgetNfe: 400 }), MODEL), { server: failing(odd, 'denoised', () => GEN) }).result!;
    assert.deepEqual([half.candidates, half.failedCandidates], [20, 10]);
    assert.deepEqual({ ...half.nfe, executed: 0 }, { search: 380, final: 19, total: 399, executed: 0, failed: 190 });
    assert.equal(Number(half.best.candidateId.split('-')[1]) % 2, 0, 'a failed candidate never wins');
  });

  it('zero-order search: all fail (it used to propose pivots forever), all refused, and only the neighbours fail', () => {
    // Budget 19 * 26 = 494: 475 after the final generation, which pays for 25 candidates of 19.
    const budget = GEN * 26;
    const charged = expectNoWinner({ name: 'zero-order', n: 4 }, budget, failing(everything, 'denoised', () => GEN));
    assert.deepEqual([charged.candidates, charged.nfeSearch, charged.nfeFailed], [25, 475, 475]);
    const refused = expectNoWinner({ name: 'zero-order', n: 4, restart: true }, budget, failing(everything, 'refused', () => GEN));
    assert.deepEqual([refused.candidates, refused.nfeSearch], [25, 0]);

    const neighbours = (id: string) => /^zo-\d/.test(id);
    const stuck = drive(createRun(spec({ name: 'zero-order', n: 4 }, { budgetNfe: budget }), MODEL), { server: failing(neighbours, 'denoised', () => GEN) }).result!;
    // The pivot (19) and six iterations of 4 failed neighbours (24 * 19 = 456), then the final generation.
    assert.deepEqual([stuck.candidates, stuck.failedCandidates, stuck.best.candidateId], [25, 24, 'zo-pivot-0']);
    assert.deepEqual({ ...stuck.nfe, executed: 0 }, { search: 475, final: 19, total: 494, executed: 0, failed: 456 });
    const restarting = drive(createRun(spec({ name: 'zero-order', n: 4, restart: true }, { budgetNfe: budget }), MODEL), { server: failing(neighbours, 'refused', () => GEN) }).result!;
    // Pivot, 4 neighbours, restart: five starts of 5 candidates; refused neighbours cost nothing.
    assert.deepEqual([restarting.candidates, restarting.failedCandidates, restarting.nfe.search, restarting.nfe.failed], [25, 20, 5 * 19, 0]);
  });

  it('search over paths: all fail, only the perturbed paths fail, half of them fail', () => {
    // Paths-2, M = 3: initial 2 * 20 = 40; rounds to 0.08, 0.05, 0.02 (6 * 3 each) and to 0 (6 * 1): 100.
    const algorithm: AlgorithmSpec = { name: 'paths', n: 2, m: 3 };
    const initial = expectNoWinner(algorithm, 100, failing(everything, 'denoised', () => 20));
    assert.deepEqual([initial.candidates, initial.nfeSearch], [2, 40]);
    // The initial states were made but never scored: nothing to choose from, and the message says so.
    const perturbed = expectNoWinner(algorithm, 100, failing((id) => /^paths-\d/.test(id), 'denoised', () => 3), /^no candidate could be scored \(6 of 8 failed\), so there is no best noise/);
    assert.deepEqual([perturbed.candidates, perturbed.failedCandidates, perturbed.nfeSearch, perturbed.nfeFailed], [8, 6, 58, 18]);
    // Round 2 fails entirely: the walk ends with round 1's best path, finished by one Euler step (1 NFE).
    const secondRound = drive(createRun(spec(algorithm, { budgetNfe: 100 }), MODEL), { server: failing((id) => /^paths-1-/.test(id), 'refused', () => 0) }).result!;
    assert.deepEqual([secondRound.candidates, secondRound.failedCandidates, secondRound.rounds], [2 + 6 + 6, 6, 4]);
    assert.deepEqual({ ...secondRound.nfe, executed: 0 }, { search: 40 + 18, final: 1, total: 59, executed: 0, failed: 0 });
    assert.match(secondRound.best.candidateId, /^paths-0-/);
    // Round 1 ends at level 0.11 + 0.78 - 0.81 = 0.08: on the test model's Karras schedule (0.002 to 80, rho 7),
    // sigma = (0.41156 + 0.08 * 1.45856)^7 = 0.528245^7 = e^(7 * -0.638186) = 0.011477.
    const { sigmaFrom, ...finish } = (secondRound.best.lineage.ops.at(-1) as Extract<Op, { solve: unknown }>).solve;
    assert.deepEqual(finish, { sigmaTo: 0, solver: 'euler', steps: 1 });
    assert.ok(Math.abs(sigmaFrom - 0.011477) < 1e-6, `finished from sigma ${sigmaFrom}`);
    const half = drive(createRun(spec(algorithm, { budgetNfe: 100 }), MODEL), { server: failing((id) => /^paths-\d/.test(id) && odd(id), 'refused', () => 0) }).result!;
    assert.ok(half.failedCandidates > 0 && half.nfe.total <= 100 && Number.isFinite(half.best.searchScore));
    assert.equal(half.nfe.failed, 0, 'refused candidates cost nothing');
  });

  it('FK steering: all fail, and odd slots fail at every segment while resampling refills the population', () => {
    // k = 4 over 10 steps, every 2: segment 0 costs 2 steps + 1 x-prediction = 3 per particle.
    const algorithm: AlgorithmSpec = { name: 'fk', k: 4, resampleEvery: 2 };
    const all = expectNoWinner(algorithm, 40, failing(everything, 'denoised', () => 3));
    assert.deepEqual([all.candidates, all.nfeSearch], [4, 12]);
    // Every segment, slots 1 and 3 fail and the two survivors are resampled back to four particles.
    // Segment 0: 4 * 3 = 12 (6 failed); segments 1 to 3: 4 * (2 - 1 + 1) = 8 each (4 failed); segment 4
    // ends at 0: 4 * (2 - 1) = 4 (2 failed).
    const half = drive(createRun(spec(algorithm, { budgetNfe: 40 }), MODEL), { server: failing(odd, 'denoised', () => 3) });
    const result = half.result!;
    assert.deepEqual([result.candidates, result.failedCandidates], [20, 10]);
    assert.deepEqual({ ...result.nfe, executed: 0 }, { search: 40, final: 0, total: 40, executed: 0, failed: 6 + 3 * 4 + 2 });
    assert.equal((half.algorithmState as { resamplings: number }).resamplings, 4, 'every resampling point resampled');
    assert.equal(Number(result.best.candidateId.split('-')[2]) % 2, 0);
    // Segment 2 fails entirely: the particles of segment 1 are finished by one Euler step each... the best one.
    const cut = drive(createRun(spec(algorithm, { budgetNfe: 40 }), MODEL), { server: failing((id) => id.startsWith('fk-2-'), 'refused', () => 0) }).result!;
    assert.match(cut.best.candidateId, /^fk-1-/);
    assert.deepEqual({ ...cut.nfe, executed: 0 }, { search: 12 + 8, final: 1, total: 21, executed: 0, failed: 0 });
  });

  it('never charges a failed candidate more than it costs, whatever the server reports', () => {
    const server = failing(odd, 'denoised', () => 10_000);
    const done = drive(createRun(spec({ name: 'random' }, { budgetNfe: 400 }), MODEL), { server }).result!;
    assert.equal(done.nfe.failed, 10 * GEN);
  });
});

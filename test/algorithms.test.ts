// Zero-order search, search over paths, FK steering, verifier ensembles, determinism, stop and budget
// changes, each through the generic driver core on a fake server (test/fake-server.ts): no model server,
// no Temporal. The fake verifier's score is a pure function of the candidate's whole lineage, as a real
// verifier's would be; NFEs are checked against counts worked out by hand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  effectiveSampleSize,
  logPotential,
  multinomialIndices,
  normalizedWeights,
  summarize,
} from '../src/search/fk';
import { budgetRefusal, createRun, finishRound, requestStop, setBudget, startRound } from '../src/search/run';
import { deriveSeed, SeedStream } from '../src/search/seeds';
import { averagedRanks } from '../src/search/selection';
import { SpecError, type AlgorithmSpec } from '../src/search/spec';
import type { Op } from '../src/search/types';
import { assertRefused, drive, GEN, MODEL, problemsOf, result, score, searchRounds, SIGMA_MAX, SIGMA_MIN, spec, type RoundLog } from './drive';
import { FakeServer, type Scorer } from './fake-server';
import { gmmModelInfo } from './fixtures';

const FULL_SOLVE: Op = { solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0, solver: 'heun', steps: 10 } };

describe('zero-order search', () => {
  const N = 4;
  const T = 0.8;

  it('proposes the pivot first, then N neighbours of the pivot at cosine t, and moves the pivot only to a better neighbour', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'zero-order', n: N, t: T }, { budgetNfe: GEN * (2 + 6 * N) }, { log });
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 7);

    const first = rounds[0].candidates;
    assert.equal(first.length, 1);
    const pivotNoise = { seed: deriveSeed(7, SeedStream.zeroOrderPivot, 0), perturbations: [] };
    assert.deepEqual(rounds[0].lineages.get(first[0].id), { noise: pivotNoise, ops: [FULL_SOLVE] });

    let pivot = { id: first[0].id, lineage: rounds[0].lineages.get(first[0].id)!, score: score(rounds[0], first[0].id), noiseKey: rounds[0].outcomes.get(first[0].id)!.noiseKey };
    let moves = 0;
    let stays = 0;
    rounds.slice(1).forEach((round, iteration) => {
      assert.equal(round.candidates.length, N);
      const perturbationSeeds = new Set<number>();
      for (const [j, c] of round.candidates.entries()) {
        const added = { seed: deriveSeed(7, SeedStream.zeroOrderNeighbour, iteration, j), cosine: T };
        // On the wire: the pivot's noise by key, and one perturbation, however long the walk.
        assert.deepEqual(c.base, { key: pivot.noiseKey });
        assert.deepEqual(c.lineage.noise.perturbations, [added]);
        const whole = round.lineages.get(c.id)!;
        assert.equal(whole.noise.seed, pivot.lineage.noise.seed, 'a neighbour keeps the pivot seed');
        assert.deepEqual(whole.noise.perturbations, [...pivot.lineage.noise.perturbations, added], "a neighbour extends the pivot's perturbations");
        assert.deepEqual(whole.ops, [FULL_SOLVE]);
        assert.equal(c.scoreXpred, false);
        perturbationSeeds.add(added.seed);
      }
      assert.equal(perturbationSeeds.size, N, 'distinct neighbours');
      const bestNeighbour = round.candidates
        .map((c) => ({ id: c.id, lineage: round.lineages.get(c.id)!, score: score(round, c.id), noiseKey: round.outcomes.get(c.id)!.noiseKey }))
        .reduce((a, b) => (b.score > a.score ? b : a));
      if (bestNeighbour.score > pivot.score) {
        pivot = bestNeighbour;
        moves++;
      } else {
        stays++;
      }
    });
    assert.ok(moves > 1, 'the walk moved more than once, so the wire check above covered a long chain');
    assert.ok(stays > 0, 'the walk stayed put at least once (pick another seed if the fake scores change)');
    assert.deepEqual(done.best.noise, pivot.lineage.noise);
    assert.equal(done.best.searchScore, pivot.score);
    assert.equal(done.best.score, pivot.score, 'the final generation of the same noise scores the same');
    assert.equal(done.nfe.total, GEN * (2 + 6 * N));
  });

  it('with restart, starts from a fresh pivot when no neighbour beats the pivot, and the winner is the best of all starts', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'zero-order', n: 2, t: T, restart: true }, { budgetNfe: GEN * 60 }, { log });
    const rounds = searchRounds(log);
    let restarts = 0;
    let pivot: number | null = null;
    const champions: number[] = [];
    for (const round of rounds) {
      const scores = round.candidates.map((c) => score(round, c.id));
      if (pivot === null) {
        assert.equal(round.candidates.length, 1, 'a (re)start proposes a lone pivot');
        assert.deepEqual(round.lineages.get(round.candidates[0].id)!.noise, { seed: deriveSeed(7, SeedStream.zeroOrderPivot, restarts), perturbations: [] });
        assert.equal(round.candidates[0].id, `zo-pivot-${restarts}`);
        pivot = scores[0];
        continue;
      }
      const best = Math.max(...scores);
      if (best > pivot) {
        pivot = best;
      } else {
        champions.push(pivot);
        pivot = null;
        restarts++;
      }
    }
    assert.ok(restarts >= 2, `only ${restarts} restarts; the test wants a few`);
    const all = [...champions, ...(pivot !== null ? [pivot] : [])];
    assert.equal(done.best.searchScore, Math.max(...all));
    // The pivot only ever moves up, so the best of all starts is the best of everything evaluated.
    const everything = rounds.flatMap((r) => [...r.outcomes.values()].map((o) => o.scores.v));
    assert.equal(done.best.searchScore, Math.max(...everything));
  });

  it('never exceeds the budget; the last iteration is partial when the budget pays for only part of N', () => {
    for (const extra of [0, 1, 2, 3]) {
      for (const slack of [0, GEN - 1]) {
        const budgetNfe = GEN * (1 + 1 + 2 * N + extra) + slack;
        const log: RoundLog[] = [];
        const done = result({ name: 'zero-order', n: N, t: T }, { budgetNfe }, { log });
        const sizes = searchRounds(log).map((r) => r.candidates.length);
        assert.deepEqual(sizes, [1, N, N, ...(extra > 0 ? [extra] : [])], `budget ${budgetNfe}`);
        assert.equal(done.nfe.total, budgetNfe - slack);
        assert.equal(done.nfe.final, GEN);
        assert.equal(done.candidates, 1 + 2 * N + extra);
      }
    }
  });

  it('refuses bad parameters with a message naming the field', () => {
    assertRefused({ name: 'zero-order', n: 0 }, /^n: 0 must be a whole number of at least 1/);
    assertRefused({ name: 'zero-order', n: 2.5 }, /^n: 2\.5 must be a whole number/);
    for (const t of [0, 1, -0.2, 1.5, Number.NaN]) assertRefused({ name: 'zero-order', t }, /^t: .* must lie in \(0, 1\)/);
    assertRefused({ name: 'zero-order' }, /^budget: 56 NFEs cannot pay for a pivot, one neighbour and the final generation, which costs 57 NFEs/, { budgetNfe: 56 });
    assert.doesNotThrow(() => createRun(spec({ name: 'zero-order' }, { budgetNfe: 57 }), MODEL));
  });
});

describe('search over paths', () => {
  const PRESET = { name: 'paths', n: 4, m: 8, sigmaStart: 0.11, deltaF: 0.78, deltaB: 0.81, backwardSteps: 1 } as const;

  it("costs the paper preset's 400 NFEs, counted by hand", () => {
    // Initial: 4 paths solved 80 -> 0.11 with Heun, 10 steps, not ending at 0: 4 * 20 = 80.
    // Targets: 0.11 -> 0.08 -> 0.05 -> 0.02 -> -0.01, taken to 0 (below sigma_min): four rounds of 4 * 8.
    // Three rounds to sigma > 0: one Heun step (2 NFEs) plus the x-prediction (1): 32 * 3 = 96 each.
    // The last round to sigma = 0: one Heun step ending at 0 (1 NFE), no x-prediction: 32.
    const done = result(PRESET, { budgetNfe: 400 });
    assert.deepEqual({ ...done.nfe, executed: 0 }, { search: 400, final: 0, total: 400, executed: 0, failed: 0 });
    assert.equal(done.candidates, 4 + 4 * 32);
    assert.equal(done.rounds, 5);
    assert.equal(result({ name: 'paths' }, { budgetNfe: 400 }).nfe.total, 400, 'with N sized by the budget, the defaults are the preset');
    assert.equal(result({ name: 'paths' }, { budgetNfe: 399 }).candidates, 3 + 3 * 32, 'N is as many paths as the budget pays for');
  });

  it('starts with N unverified states at sigma_start, then extends the kept states with renoise and a backward solve, keeping the top N', () => {
    const log: RoundLog[] = [];
    const done = result(PRESET, { budgetNfe: 400 }, { log });
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 5);

    // Levels on the test model's Karras schedule (0.002 to 80, rho 7): 0.002^(1/7) = 0.41156,
    // 80^(1/7) = 1.87012, so sigma(0.11) = (0.41156 + 0.11 * 1.45856)^7 = 0.57200^7 = 0.020035 and
    // sigma(0.89) = 1.70968^7 = 42.698: the paper's first round goes 0.020 -> 42.7 -> sigma(0.08) = 0.011477.
    assertClose(levelSigma(0.11), 0.020035, 1e-4);
    assertClose(levelSigma(0.89), 42.698, 1e-4);
    assertClose(levelSigma(0.08), 0.011477, 1e-4);
    const initial = rounds[0];
    assert.equal(initial.verify, false);
    for (const batch of initial.batches) assert.deepEqual(batch.verifiers, []);
    assert.equal(initial.candidates.length, 4);
    initial.candidates.forEach((c, i) => {
      assert.equal(c.base, undefined);
      assert.deepEqual(c.lineage.noise, { seed: deriveSeed(7, SeedStream.pathsNoise, i), perturbations: [] });
      assertOpsClose(c.lineage.ops, [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: levelSigma(0.11), solver: 'heun', steps: 10 } }]);
    });

    let kept = initial.candidates.map((c) => ({ id: c.id, lineage: initial.lineages.get(c.id)!, key: initial.outcomes.get(c.id)!.key }));
    let level = 0.11;
    const targets: number[] = [];
    for (const [r, round] of rounds.slice(1).entries()) {
      // Levels 0.11 -> 0.08 -> 0.05 -> 0.02 -> -0.01, which is below level 0 (sigma_min): sigma = 0.
      const raw = level + 0.78 - 0.81;
      const target = raw <= 1e-9 ? 0 : raw;
      targets.push(target);
      assert.equal(round.verify, true);
      for (const batch of round.batches) assert.deepEqual(batch.verifiers, ['v']);
      assert.equal(round.candidates.length, kept.length * 8);
      round.candidates.forEach((c, index) => {
        const b = Math.floor(index / 8);
        const j = index % 8;
        const parent = kept[b];
        const added: Op[] = [
          { renoise: { sigmaFrom: levelSigma(level), sigmaTo: levelSigma(level + 0.78), seed: deriveSeed(7, SeedStream.pathsRenoise, r, b, j) } },
          { solve: { sigmaFrom: levelSigma(level + 0.78), sigmaTo: target === 0 ? 0 : levelSigma(target), solver: 'heun', steps: 1 } },
        ];
        // On the wire: the kept state by key and the two new ops only.
        assert.deepEqual(c.base, { key: parent.key });
        assertOpsClose(c.lineage.ops, added);
        const whole = round.lineages.get(c.id)!;
        assert.deepEqual(whole.noise, parent.lineage.noise);
        assert.deepEqual(whole.ops, [...parent.lineage.ops, ...c.lineage.ops]);
        assert.equal(c.scoreXpred, target > 0);
      });
      kept = round.candidates
        .map((c, order) => ({ id: c.id, lineage: round.lineages.get(c.id)!, key: round.outcomes.get(c.id)!.key, score: score(round, c.id), order }))
        .sort((x, y) => y.score - x.score || x.order - y.order)
        .slice(0, 4);
      level = target;
    }
    assert.equal(targets.length, 4);
    assert.ok(targets.slice(0, 3).every((s) => s > 0));
    assert.equal(targets[3], 0, 'the walk ends at sigma = 0');
    assert.equal(done.best.candidateId, kept[0].id);
    assert.equal(done.best.searchScore, score(rounds[4], kept[0].id));
    assert.deepEqual(done.best.scores, { v: score(rounds[4], kept[0].id) }, 'no final generation: the winner is a finished sample');
    assert.deepEqual(done.best.lineage, kept[0].lineage, 'the result carries the whole lineage, rebuilt from the recipe');
    assert.ok(!log.some((r) => r.phase === 'final'));
  });

  it('takes a target at or below the lowest level (up to rounding) to sigma = 0 and ends there', () => {
    // 0.02 + 0.78 - 0.81 = -0.01 is below level 0; 0.03 + 0.78 - 0.81 is 0 up to rounding: both end in one round.
    for (const sigmaStart of [0.02, 0.03]) {
      const log: RoundLog[] = [];
      const done = result({ ...PRESET, n: 2, m: 3, sigmaStart }, { budgetNfe: 1000 }, { log });
      const rounds = searchRounds(log);
      assert.equal(rounds.length, 2, `sigmaStart ${sigmaStart}`);
      for (const c of rounds[1].candidates) {
        assertOpsClose([c.lineage.ops.at(-1)!], [{ solve: { sigmaFrom: levelSigma(sigmaStart + 0.78), sigmaTo: 0, solver: 'heun', steps: 1 } }]);
        assert.equal(c.scoreXpred, false);
      }
      // Initial: 2 paths, Heun 10 steps to sigma > 0 (2 * 10 each); one round of 2 * 3 one-step Heun solves to 0 (1 each).
      assert.equal(done.nfe.total, 2 * 20 + 2 * 3 * 1);
    }
    // 0.031 + 0.78 - 0.81 = 0.001 is a level above sigma_min's: a second round, then 0.001 - 0.03 < 0 ends it.
    const log: RoundLog[] = [];
    result({ ...PRESET, n: 2, m: 3, sigmaStart: 0.031 }, { budgetNfe: 1000 }, { log });
    assert.equal(searchRounds(log).length, 3);
  });

  it('maps the levels through a shifted (rectified-flow) schedule', () => {
    // shift 3, sigma_max 1: sigma(l) = 3l / (1 + 2l): sigma(0.11) = 0.33 / 1.22 = 0.270492, sigma(0.89) =
    // 2.67 / 2.78 = 0.960432, sigma(0.08) = 0.24 / 1.16 = 0.206897. sigma_min 0.001 is level
    // 0.001 / (3 - 2 * 0.001) = 0.000334, so the fourth round's -0.01 is sigma = 0.
    const flow = gmmModelInfo({ ...MODEL, sigmaMin: 0.001, sigmaMax: 1, process: 'flow', schedule: { kind: 'shifted', rho: 7, shift: 3 } });
    const log: RoundLog[] = [];
    const done = result(PRESET, { budgetNfe: 400 }, { log }, flow);
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 5);
    assertClose((rounds[0].candidates[0].lineage.ops[0] as { solve: { sigmaTo: number } }).solve.sigmaTo, 0.270492, 1e-5);
    const [renoise, solve] = rounds[1].candidates[0].lineage.ops as unknown as [{ renoise: { sigmaFrom: number; sigmaTo: number } }, { solve: { sigmaFrom: number; sigmaTo: number } }];
    assertClose(renoise.renoise.sigmaFrom, 0.270492, 1e-5);
    assertClose(renoise.renoise.sigmaTo, 0.960432, 1e-5);
    assertClose(solve.solve.sigmaFrom, 0.960432, 1e-5);
    assertClose(solve.solve.sigmaTo, 0.206897, 1e-5);
    assert.equal((rounds[4].candidates[0].lineage.ops[1] as { solve: { sigmaTo: number } }).solve.sigmaTo, 0);
    assert.equal(done.nfe.total, 400, 'the same rounds, so the same cost as on the Karras model');
  });

  it('refuses bad parameters and a budget below the cost, each with a message', () => {
    assertRefused({ ...PRESET, deltaB: 0.78 }, /^deltaB: 0\.78 must be above deltaF \(0\.78\)/);
    assertRefused({ ...PRESET, deltaB: 0.5 }, /^deltaB: 0\.5 must be above deltaF \(0\.78\)/);
    assertRefused({ ...PRESET, sigmaStart: 0 }, /^sigmaStart: level 0 must lie above the level of the model's sigma_min \(0\) and below 1/);
    assertRefused({ ...PRESET, sigmaStart: 1 }, /^sigmaStart: level 1 must lie above/);
    for (const [key, value] of [['sigmaStart', 90], ['sigmaStart', -0.1], ['deltaF', 1.5], ['deltaB', Number.NaN]] as const) {
      const problems = problemsOf(() => createRun(spec({ ...PRESET, [key]: value }), MODEL));
      assert.deepEqual(problems, [`${key}: ${value} is a normalised noise level and must lie in [0, 1] (1: sigma_max, 0: sigma = 0; docs/algorithms.md, "Noise levels")`]);
    }
    assertRefused({ ...PRESET, sigmaStart: 0.5, deltaF: 0.6, deltaB: 0.7 }, /^deltaF: sigmaStart \+ deltaF = 1\.1 is above level 1/);
    assertRefused({ name: 'paths', deltaB: 0.5 }, /^deltaB: 0\.5 must be above deltaF/, {}, MODEL);
    assertRefused({ ...PRESET, n: 0 }, /^n: 0 must be a whole number of at least 1/);
    assertRefused({ ...PRESET, m: 0 }, /^m: 0 must be a whole number of at least 1/);
    assertRefused({ ...PRESET, backwardSteps: 0 }, /^backwardSteps: 0 must be/);
    assertRefused(PRESET, /^budget: 399 NFEs cannot pay for Paths-4 with M = 8, which costs 400 NFEs; use --budget 400 or more/, { budgetNfe: 399 });
    const both = problemsOf(() => createRun(spec({ ...PRESET, n: 0, m: 0 }), MODEL));
    assert.equal(both.length, 2, 'every problem at once');
  });
});

/** sigma at a noise level on the test model's Karras schedule (0.002 to 80, rho 7): worked out here, not taken from src. */
function levelSigma(level: number): number {
  const lo = 0.002 ** (1 / 7);
  const hi = 80 ** (1 / 7);
  return (lo + level * (hi - lo)) ** 7;
}

function assertClose(actual: number, expected: number, relative: number, what = ''): void {
  assert.ok(Math.abs(actual - expected) <= relative * Math.abs(expected), `${what} ${actual} is not ${expected} within ${relative}`);
}

/** Ops equal up to the last bits of their sigmas. */
function assertOpsClose(actual: Op[], expected: Op[]): void {
  assert.equal(actual.length, expected.length);
  actual.forEach((op, i) => {
    const [a, e] = 'solve' in op ? [op.solve, (expected[i] as { solve: object }).solve] : [op.renoise, (expected[i] as { renoise: object }).renoise];
    const { sigmaFrom, sigmaTo, ...rest } = a as { sigmaFrom: number; sigmaTo: number };
    const { sigmaFrom: from, sigmaTo: to, ...wanted } = e as { sigmaFrom: number; sigmaTo: number };
    assert.deepEqual(rest, wanted, `op ${i}`);
    assertClose(sigmaFrom, from, 1e-12, `op ${i} sigmaFrom`);
    assertClose(sigmaTo, to, 1e-12, `op ${i} sigmaTo`);
  });
}

/** The Karras schedule, rho = 7, from 80 to 0.002 in n points, then 0: worked out here, not taken from src. */
function karras(n: number): number[] {
  const hi = 80 ** (1 / 7);
  const lo = 0.002 ** (1 / 7);
  return [...Array.from({ length: n }, (_, i) => (hi + (i / (n - 1)) * (lo - hi)) ** 7), 0];
}

describe('FK steering', () => {
  it('extends every particle by one euler_ancestral op of resampleEvery steps a segment, down to sigma = 0', () => {
    const sigmas = karras(10);
    const log: RoundLog[] = [];
    const done = result({ name: 'fk', k: 4, resampleEvery: 3 }, {}, { log });
    const rounds = searchRounds(log);
    const bounds = [[0, 3], [3, 6], [6, 9], [9, 10]];
    assert.equal(rounds.length, bounds.length);
    rounds.forEach((round, r) => {
      assert.equal(round.candidates.length, 4);
      for (const [slot, c] of round.candidates.entries()) {
        assert.equal(c.id, `fk-${r}-${slot}`);
        assert.equal(c.lineage.ops.length, 1, 'one op a segment');
        const op = (c.lineage.ops[0] as Extract<Op, { solve: unknown }>).solve;
        const [from, to] = bounds[r];
        assert.ok(Math.abs(op.sigmaFrom - sigmas[from]) <= 1e-12 * sigmas[from]);
        assert.ok(Math.abs(op.sigmaTo - sigmas[to]) <= 1e-12 * sigmas[from]);
        assert.equal(op.solver, 'euler_ancestral');
        assert.equal(op.steps, to - from);
        assert.equal(op.seed, deriveSeed(7, SeedStream.fkStep, r, slot));
        assert.equal(c.scoreXpred, sigmas[to] > 0);
        if (r === 0) {
          assert.equal(c.base, undefined);
          assert.equal(c.lineage.noise.seed, deriveSeed(7, SeedStream.fkNoise, slot));
        } else {
          // The parent state by key, flagged as x-predicted: its reward's denoiser call is the next step's.
          assert.equal(c.base?.xpred, true);
          const parents = rounds[r - 1].candidates.map((p) => rounds[r - 1].outcomes.get(p.id)!.key);
          assert.ok(parents.includes(c.base!.key), 'extends a particle of the previous segment');
          assert.equal(round.lineages.get(c.id)!.ops.length, r + 1);
        }
      }
    });
    assert.ok(!log.some((r) => r.phase === 'final'), 'the winner is a finished sample');
    assert.equal(done.best.lineage.ops.length, 4);
    assert.ok(Number.isFinite(done.best.searchScore));
  });

  it('steps a shifted (rectified-flow) model on its own schedule: uniform in level', () => {
    // shift 3, sigma_max 1, 10 steps: levels 1, 0.9, ..., 0 and sigma = 3l / (1 + 2l). Segments of 3 steps
    // end at levels 0.7, 0.4, 0.1, 0: sigmas 2.1 / 2.4 = 0.875, 1.2 / 1.8 = 0.666667, 0.3 / 1.2 = 0.25, 0.
    const flow = gmmModelInfo({ ...MODEL, sigmaMin: 0.001, sigmaMax: 1, process: 'flow', schedule: { kind: 'shifted', rho: 7, shift: 3 } });
    const log: RoundLog[] = [];
    result({ name: 'fk', k: 2, resampleEvery: 3 }, {}, { log }, flow);
    const ends = searchRounds(log).map((round) => (round.candidates[0].lineage.ops[0] as Extract<Op, { solve: unknown }>).solve);
    assert.deepEqual(ends.map((op) => op.steps), [3, 3, 3, 1]);
    assert.equal(ends[0].sigmaFrom, 1);
    [0.875, 2 / 3, 0.25].forEach((sigma, i) => assert.ok(Math.abs(ends[i].sigmaTo - sigma) < 1e-12 && ends[i + 1].sigmaFrom === ends[i].sigmaTo, `segment ${i}`));
    assert.equal(ends[3].sigmaTo, 0);
  });

  it('counts k * steps: the reward x-prediction at a resampling point is the next step, charged once', () => {
    // k = 4, every 3 of 10 steps: segments [0,3) [3,6) [6,9) [9,10). Per particle: 3 + 1 (x-pred), then
    // 3 - 1 (reused) + 1, 3 - 1 + 1, 1 - 1 = 4 + 3 + 3 + 0 = 10 = steps.
    const cases = [
      { k: 4, resampleEvery: 3, steps: 10, expected: 40 },
      { k: 8, resampleEvery: 2, steps: 10, expected: 80 },
      { k: 3, resampleEvery: 1, steps: 5, expected: 15 },
      { k: 5, resampleEvery: 20, steps: 10, expected: 50 },
    ];
    for (const { k, resampleEvery, steps, expected } of cases) {
      const done = result({ name: 'fk', k, resampleEvery }, { searchSampler: { steps } });
      assert.deepEqual({ ...done.nfe, executed: 0 }, { search: expected, final: 0, total: expected, executed: 0, failed: 0 }, `k ${k} every ${resampleEvery} of ${steps}`);
    }
    assertRefused({ name: 'fk', k: 4, resampleEvery: 3 }, /^budget: 39 NFEs cannot pay for FK steering with k = 4 particles over 10 steps, which costs 40 NFEs/, { budgetNfe: 39 });
  });

  it('resampling hands the high-reward particles to the next segment', () => {
    const favoured = new Set([0, 1].map((i) => deriveSeed(7, SeedStream.fkNoise, i)));
    const scorer: Scorer = (lineage) => (favoured.has(lineage.noise.seed) ? 1 : 0);
    for (const resampling of ['multinomial', 'adaptive'] as const) {
      const log: RoundLog[] = [];
      const run = drive(createRun(spec({ name: 'fk', k: 6, lambda: 50, resampling, resampleEvery: 3 }), MODEL), { log, scorer });
      const rounds = searchRounds(log);
      const favouredKeys = new Set(rounds[0].candidates.filter((c) => favoured.has(c.lineage.noise.seed)).map((c) => rounds[0].outcomes.get(c.id)!.key));
      for (const c of rounds[1].candidates) {
        assert.ok(favouredKeys.has(c.base!.key), `${resampling}: particle ${c.id} descends from an unfavoured particle`);
        assert.ok(favoured.has(rounds[1].lineages.get(c.id)!.noise.seed));
      }
      assert.ok(new Set(rounds[1].candidates.map((c) => c.base!.key)).size < 6, 'high-reward particles were duplicated');
      assert.ok(favoured.has(run.result!.best.noise.seed));
      assert.equal(run.result!.best.searchScore, 1);
    }
  });

  it('adaptive resampling leaves equal-reward particles alone (ESS = k); multinomial resamples at every point', () => {
    const flat: Scorer = () => 0.5;
    const log: RoundLog[] = [];
    drive(createRun(spec({ name: 'fk', k: 5, resampling: 'adaptive', resampleEvery: 3 }), MODEL), { log, scorer: flat });
    const rounds = searchRounds(log);
    for (let r = 1; r < rounds.length; r++) {
      rounds[r].candidates.forEach((c, i) => {
        assert.equal(c.base!.key, rounds[r - 1].outcomes.get(rounds[r - 1].candidates[i].id)!.key, `particle ${i} keeps its own lineage`);
      });
    }
    const multinomial = drive(createRun(spec({ name: 'fk', k: 5, resampling: 'multinomial', resampleEvery: 3 }), MODEL), { scorer: flat });
    assert.equal((multinomial.algorithmState as { resamplings: number }).resamplings, 3);
  });

  it('computes each potential from the rewards so far, worked out by hand', () => {
    // Rewards 0.2, then 0.5, then 0.3, with lambda = 2.
    let summary = summarize(null, 0.2);
    assert.equal(logPotential('max', 2, summary), 0.4);
    assert.equal(logPotential('sum', 2, summary), 0.4);
    assert.equal(logPotential('difference', 2, summary), 0.4, 'the first difference is against 0');
    summary = summarize(summary, 0.5);
    assert.equal(logPotential('max', 2, summary), 1.0);
    assert.ok(Math.abs(logPotential('sum', 2, summary) - 1.4) < 1e-12);
    assert.ok(Math.abs(logPotential('difference', 2, summary) - 0.6) < 1e-12);
    summary = summarize(summary, 0.3);
    assert.equal(logPotential('max', 2, summary), 1.0, 'max keeps the best reward, not the last');
    assert.ok(Math.abs(logPotential('sum', 2, summary) - 2.0) < 1e-12);
    assert.ok(Math.abs(logPotential('difference', 2, summary) - -0.4) < 1e-12, 'a falling reward gives a negative difference');
  });

  it('normalizes weights, measures the effective sample size and resamples by inversion, worked out by hand', () => {
    // log weights ln 1, ln 3: weights 1/4, 3/4; ESS = 1 / (1/16 + 9/16) = 1.6.
    const weights = normalizedWeights([0, Math.log(3)]);
    assert.ok(Math.abs(weights[0] - 0.25) < 1e-12 && Math.abs(weights[1] - 0.75) < 1e-12);
    assert.ok(Math.abs(effectiveSampleSize(weights) - 1.6) < 1e-12);
    assert.ok(Math.abs(effectiveSampleSize([0.25, 0.25, 0.25, 0.25]) - 4) < 1e-12);
    // Cumulative 0.125, 0.375, 1 (exact in binary): u < 0.125 -> 0; 0.125 <= u < 0.375 -> 1; else 2.
    assert.deepEqual(multinomialIndices([0.125, 0.25, 0.625], [0.1, 0.125, 0.374, 0.375, 0.99]), [0, 1, 1, 2, 2]);
    // Large log weights do not overflow: only differences matter.
    const big = normalizedWeights([1000, 1000 + Math.log(3)]);
    assert.ok(Math.abs(big[1] - 0.75) < 1e-12);
  });

  it('adaptive resampling fires exactly when the ESS falls below k / 2', () => {
    // Two particles with max potential, lambda = 1: rewards r and 0 give weights e^r : 1, and
    // ESS = (1 + e^r)^2 / (1 + e^2r), which is below 1 (= k / 2) for no finite r, so two particles never
    // resample; four particles with one favoured: ESS = (3 + e^r)^2 / (3 + e^2r) < 2 exactly when
    // e^2r - 6 e^r - 3 > 0, i.e. e^r > 3 + sqrt(12) = 6.46.
    const favouredSeed = deriveSeed(7, SeedStream.fkNoise, 0);
    const run = (lambda: number, k: number) =>
      (drive(createRun(spec({ name: 'fk', k, lambda, resampling: 'adaptive', resampleEvery: 5 }), MODEL), { scorer: (l) => (l.noise.seed === favouredSeed ? 1 : 0) }).algorithmState as { resamplings: number }).resamplings;
    assert.equal(run(50, 2), 0);
    assert.equal(run(1.8, 4), 0, 'e^1.8 = 6.05: ESS 2.07 >= 2');
    assert.equal(run(2.0, 4), 1, 'e^2 = 7.39: ESS 1.87 < 2');
  });

  it('refuses an unknown potential or resampling, and a model without an ancestral solver', () => {
    assertRefused({ name: 'fk', potential: 'min' as never }, /^potential: "min" is not one of max, difference, sum/);
    assertRefused({ name: 'fk', resampling: 'systematic' as never }, /^resampling: "systematic" is not one of multinomial, adaptive/);
    assertRefused({ name: 'fk', k: 0 }, /^k: 0 must be a whole number of at least 1/);
    assertRefused({ name: 'fk', lambda: -1 }, /^lambda: -1 must be a finite number >= 0/);
    assertRefused({ name: 'fk', k: 2 }, /fk steers an euler_ancestral sampler, which model gmm does not offer/, {}, { ...MODEL, solvers: ['euler', 'heun'] });
  });
});

describe('verifier ensembles', () => {
  it('random search picks the best mean rank and reports every verifier score', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'random', n: 30 }, { verifiers: ['a', 'b'] }, { log });
    const rounds = searchRounds(log);
    const candidates = rounds.flatMap((r) => r.candidates);
    const outcomes = new Map(rounds.flatMap((r) => [...r.outcomes]));
    const ranksA = averagedRanks(candidates.map((c) => outcomes.get(c.id)!.scores.a));
    const ranksB = averagedRanks(candidates.map((c) => outcomes.get(c.id)!.scores.b));
    const mean = ranksA.map((r, i) => (r + ranksB[i]) / 2);
    const winner = mean.indexOf(Math.max(...mean));
    assert.equal(done.best.candidateId, candidates[winner].id);
    assert.equal(done.best.searchScore, mean[winner]);
    assert.equal(done.best.score, mean[winner], 'with an ensemble the score is the mean rank');
    assert.deepEqual(done.best.scores, outcomes.get(candidates[winner].id)!.scores, 'the final generation of the winner scores as it did');
    assert.deepEqual(Object.keys(done.verifierCosts).sort(), ['a', 'b']);
    assert.notEqual(ranksA.indexOf(30), ranksB.indexOf(30), 'the two fake verifiers should disagree on the best');
  });
});

describe('determinism', () => {
  const algorithms: AlgorithmSpec[] = [
    { name: 'random', roundSize: 5 },
    { name: 'zero-order', n: 3, t: 0.7, restart: true },
    { name: 'paths', n: 3, m: 4 },
    { name: 'fk', k: 6, resampling: 'multinomial', potential: 'difference' },
    { name: 'fk', k: 6, resampling: 'adaptive', lambda: 30 },
  ];
  for (const algorithm of algorithms) {
    it(`${JSON.stringify(algorithm)}: the same best and NFEs whatever the batch size, outcome order or server restarts`, () => {
      const reference = result(algorithm);
      const same = (again: ReturnType<typeof result>, what: string) => {
        assert.deepEqual(again.best, { ...reference.best, key: again.best.key }, what);
        assert.deepEqual(again.nfe, reference.nfe, what);
        assert.equal(again.candidates, reference.candidates, what);
      };
      for (const maxBatch of [1, 3, 64]) {
        for (const order of ['as-is', 'reversed', 'shuffled'] as const) same(result(algorithm, {}, { order }, { ...MODEL, maxBatch }), `maxBatch ${maxBatch}, ${order}`);
      }
      same(result(algorithm, {}, { packed: true }), 'batches and outcomes packed as they travel through Temporal');
      const log: RoundLog[] = [];
      same(result(algorithm, {}, { log, restartBefore: (i) => i % 2 === 0, packed: true }), 'a server that restarts every other round');
      if (algorithm.name !== 'random') assert.ok(log.some((r) => r.resend), 'lost bases were sent again whole');
      assert.notDeepEqual(result(algorithm, { seed: 8 }).best, reference.best, 'another seed gives another search');
    });
  }

  it('sends a lost base again with the whole lineage, rebuilt from the recipe, and only the candidates that lost it', () => {
    const log: RoundLog[] = [];
    result({ name: 'fk', k: 4, resampleEvery: 2 }, {}, { log, restartBefore: (i) => i === 2 });
    const resend = log.find((r) => r.resend)!;
    const lost = log[log.indexOf(resend) - 1];
    assert.ok([...lost.outcomes.values()].every((o) => o.error?.code === 'NOT_FOUND'));
    const sent = resend.batches.flatMap((b) => b.candidates);
    assert.equal(sent.length, 4);
    for (const c of sent) {
      assert.equal(c.base, undefined, 'no base: the whole lineage');
      assert.equal(c.lineage.ops.length, 2, 'noise, segment 0 and segment 1: the whole lineage of a particle in its second segment');
      assert.deepEqual(c.lineage.noise.perturbations, []);
    }
  });
});

describe('stop and budget changes', () => {
  it('requestStop ends a random search after the round in flight, with the best so far', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'random', roundSize: 4 }, { budgetNfe: 2000 }, { log, during: (run, round) => (round === 2 ? requestStop(run) : run) });
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 2);
    assert.equal(done.stopped, true);
    assert.equal(done.candidates, 8);
    assert.deepEqual({ ...done.nfe, executed: 0 }, { search: 8 * GEN, final: GEN, total: 9 * GEN, executed: 0, failed: 0 });
    const all = rounds.flatMap((r) => r.candidates.map((c) => ({ id: c.id, s: score(r, c.id) })));
    const best = all.reduce((a, b) => (b.s > a.s ? b : a));
    assert.equal(done.best.candidateId, best.id);
    assert.equal(done.best.searchScore, best.s);
    assert.equal(result({ name: 'random', roundSize: 4 }, { budgetNfe: 2000 }).stopped, false);
  });

  it('setBudget raises the budget of a zero-order search, which then evaluates more candidates', () => {
    const budgetNfe = GEN * (2 + 4);
    const plain = result({ name: 'zero-order', n: 4 }, { budgetNfe });
    assert.equal(plain.candidates, 5);
    const raised = result({ name: 'zero-order', n: 4 }, { budgetNfe }, { during: (run, round) => (round === 1 ? setBudget(run, budgetNfe + 8 * GEN) : run) });
    assert.equal(raised.candidates, 13);
    assert.equal(raised.budget.nfe, budgetNfe + 8 * GEN);
    assert.equal(raised.nfe.total, budgetNfe + 8 * GEN);
    assert.ok(raised.best.searchScore >= plain.best.searchScore);
  });

  it('setBudget raises the budget of a random search without n, which then evaluates more candidates', () => {
    const raised = result({ name: 'random', roundSize: 2 }, { budgetNfe: 200 }, { during: (run, round) => (round === 1 ? setBudget(run, 2000) : run) });
    assert.equal(raised.candidates, Math.floor((2000 - GEN) / GEN));
  });

  it('budgetRefusal refuses a budget below what is spent or committed, and anything after the end', () => {
    const server = new FakeServer({ scorer: () => 0.5 });
    let run = createRun(spec({ name: 'random', roundSize: 4 }, { budgetNfe: 1000 }), MODEL);
    const first = startRound(run);
    run = finishRound(first.run, first.batches.map((b) => server.evaluate(b)));
    const second = startRound(run);
    // 4 candidates spent (4 * 19), 4 in flight (4 * 19), the final generation reserved (19): 171.
    assert.equal(budgetRefusal(second.run, 171), null);
    assert.match(budgetRefusal(second.run, 170)!, /^budget: 170 NFEs is below what is spent or committed \(171 NFEs, the final generation included\)/);
    assert.throws(() => setBudget(second.run, 170), (error: SpecError) => error instanceof SpecError && /below what is spent/.test(error.problems[0]));
    assert.match(budgetRefusal(second.run, 1.5)!, /^budget: 1\.5 must be a whole number of NFEs/);
    assert.match(budgetRefusal(second.run, 0)!, /^budget: 0 must be a whole number/);
    const lowered = setBudget(second.run, 171);
    const done = drive(finishRound(lowered, second.batches.map((b) => server.evaluate(b))), { server });
    assert.equal(done.result!.candidates, 8);
    assert.equal(done.result!.nfe.total, 171);
    assert.match(budgetRefusal(done, 5000)!, /^budget: the search is already done/);
  });

  it('budgetRefusal counts the final generation once while it is in flight', () => {
    const server = new FakeServer({ scorer: () => 0.5 });
    let run = createRun(spec({ name: 'random', n: 3 }, { budgetNfe: 1000 }), MODEL);
    const search = startRound(run);
    run = finishRound(search.run, search.batches.map((b) => server.evaluate(b)));
    const final = startRound(run);
    assert.equal(final.run.phase, 'final');
    // 3 candidates (57) and the final generation in flight (19): 76 is exactly what the search costs.
    assert.equal(budgetRefusal(final.run, 76), null);
    assert.match(budgetRefusal(final.run, 75)!, /\(76 NFEs/);
    const done = finishRound(setBudget(final.run, 76), final.batches.map((b) => server.evaluate(b)));
    assert.equal(done.result!.nfe.total, 76);
  });

  // Paths and FK keep one NFE to finish a state above sigma = 0 with an Euler step.
  const floors: Array<[AlgorithmSpec, number]> = [
    // Paths-2, M = 3: round 1 (initial, 2 * 20 = 40) spent, round 2 (2 * 3 * 3 = 18) in flight, 1 to finish.
    [{ name: 'paths', n: 2, m: 3 }, 40 + 18 + 1],
    // FK k = 4 every 2 of 10 steps: segment 0 (4 * (2 + 1) = 12) spent, segment 1 (4 * 2 = 8) in flight, 1 to finish.
    [{ name: 'fk', k: 4, resampleEvery: 2 }, 12 + 8 + 1],
  ];
  for (const [algorithm, floor] of floors) {
    it(`${algorithm.name}: a budget lowered to what is committed (${floor} NFEs, counted by hand) is taken and never exceeded`, () => {
      const done = result(algorithm, { budgetNfe: 1000 }, {
        during: (run, round) => {
          if (round !== 2) return run;
          assert.match(budgetRefusal(run, floor - 1)!, new RegExp(`\\(${floor} NFEs`));
          return setBudget(run, floor);
        },
      });
      assert.equal(done.budget.nfe, floor);
      assert.equal(done.stopped, true);
      assert.ok(done.nfe.total <= floor, `spent ${done.nfe.total} of a budget of ${floor}`);
    });
  }

  it('a paths search stopped during its first (unverified) round says so, without blaming failed candidates', () => {
    assert.throws(
      () => result({ name: 'paths', n: 2, m: 3 }, {}, { during: (run, round) => (round === 1 ? requestStop(run) : run) }),
      /stopped before any candidate was scored/,
    );
  });

  it('a search stopped before its first round says so, not that its 0 candidates failed', () => {
    const stopped = requestStop(createRun(spec({ name: 'random' }), MODEL));
    assert.throws(() => startRound(stopped), /^SearchFailure: the search was stopped before any candidate was scored/);
  });
});

describe('what a verifier needs, refused before anything is spent', () => {
  const SELFSUP = gmmModelInfo({ sigmaMin: SIGMA_MIN, sigmaMax: SIGMA_MAX, defaultSteps: 10, defaultSolver: 'heun' });
  const withSelfsup = (overrides = {}) => ({ verifiers: ['gmm-selfsup'], condition: { classLabel: 3 }, ...overrides });

  it('refuses FK steering with a self-supervised verifier: its first rewards come long before sigma 0.4', () => {
    // Karras, 10 steps, rho 7: sigma_1 = 45.8, so the first resampling point (after 2 steps, at sigma_2)
    // has only stepped from 80 and 45.8.
    const sigmas = karras(10);
    assert.ok(sigmas[1] > 40 && sigmas[1] < 50);
    assertRefused({ name: 'fk', k: 4 }, /^verifier: gmm-selfsup compares the sample with the denoiser's x-prediction at sigma <= 0\.4, but fk scores its first candidates at sigma \d+(\.\d+)? after stepping only down to sigma 4\d\.\d+; use a verifier without one \(gmm-oracle, gmm-classifier\)/, withSelfsup(), SELFSUP);
  });

  it('refuses a one-step sampler with it (the only step starts at sigma_max) and takes a two-step one', () => {
    assertRefused({ name: 'random' }, /verifier: gmm-selfsup .* random scores its candidates after stepping only down to sigma 80/, withSelfsup({ searchSampler: { steps: 1 } }), SELFSUP);
    assert.doesNotThrow(() => createRun(spec({ name: 'random' }, withSelfsup({ searchSampler: { steps: 2 } })), SELFSUP));
  });

  it('takes paths, zero-order and random search with it, and FK with a verifier that needs no x-prediction', () => {
    for (const algorithm of [{ name: 'paths' }, { name: 'zero-order' }, { name: 'random' }] as AlgorithmSpec[]) {
      assert.doesNotThrow(() => createRun(spec(algorithm, withSelfsup()), SELFSUP), algorithm.name);
    }
    assert.doesNotThrow(() => createRun(spec({ name: 'fk', k: 4 }, { verifiers: ['gmm-oracle'], condition: { classLabel: 3 } }), SELFSUP));
  });
});

// Zero-order search, search over paths, FK steering, verifier ensembles, determinism, stop and budget
// changes, each through the generic driver core on a fake evaluator: no server, no Temporal. The fake
// verifier's score is a pure function of the candidate's lineage (the noise recipe's seed and
// perturbations and every renoise seed), as a real verifier's score would be.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fkCost, karrasSigmas } from '../src/search/fk';
import { candidateNfe, lastSigma } from '../src/search/nfe';
import { pathsCost } from '../src/search/paths';
import {
  budgetRefusal,
  createRun,
  finishRound,
  requestStop,
  setBudget,
  startRound,
  type RunState,
  type SearchResult,
} from '../src/search/run';
import { deriveSeed, SeedStream } from '../src/search/seeds';
import { averagedRanks } from '../src/search/selection';
import { SpecError, type AlgorithmSpec, type SearchSpec } from '../src/search/spec';
import type { BatchOutcome, BatchRequest, Candidate, CandidateOutcome, Op } from '../src/search/types';
import { gmmModelInfo } from './fixtures';

const SIGMA_MAX = 80;
const SIGMA_MIN = 0.002;
/** One Heun generation of 10 steps ending at sigma = 0: 2 * 10 - 1 NFEs. */
const GEN = 19;

const MODEL = gmmModelInfo({
  sigmaMin: SIGMA_MIN,
  sigmaMax: SIGMA_MAX,
  maxBatch: 8,
  maxConcurrency: 4,
  verifiers: ['v', 'a', 'b'].map((name) => ({ name, kind: 'fake', needsCondition: false, xpredSigma: 0 })),
});

function spec(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}): SearchSpec {
  return { model: 'gmm', condition: {}, algorithm, verifiers: ['v'], budgetNfe: 1000, seed: 7, ...overrides };
}

type Scorer = (candidate: Candidate, verifier: string) => number;

const VERIFIER_SALT: Record<string, number> = { v: 11, a: 12, b: 13 };

/** A uniform in [0, 1) that depends on the whole lineage (noise seed, perturbations, renoise seeds) and the verifier. */
const hashScore: Scorer = (candidate, verifier) => {
  const { noise, ops } = candidate.lineage;
  const parts = [
    ...noise.perturbations.flatMap((p) => [p.seed, Math.round(p.cosine * 1e6)]),
    ...ops.flatMap((op) => ('renoise' in op ? [op.renoise.seed] : [])),
  ];
  return deriveSeed(noise.seed, VERIFIER_SALT[verifier] ?? 99, ...parts) / 2 ** 53;
};

function evaluator(scorer: Scorer = hashScore): (batch: BatchRequest) => BatchOutcome {
  return (batch) => ({
    serverId: 'fake',
    verifierTimings: batch.verifiers.map((verifier) => ({ verifier, calls: batch.candidates.length, seconds: 0.001 })),
    outcomes: batch.candidates.map((c) => ({
      id: c.id,
      scores: Object.fromEntries(batch.verifiers.map((v) => [v, scorer(c, v)])),
      nfeLogical: candidateNfe(c, SIGMA_MAX),
      nfeExecuted: candidateNfe(c, SIGMA_MAX),
    })),
  });
}

interface RoundLog {
  phase: RunState['phase'];
  candidates: Candidate[];
  verify: boolean;
  batches: BatchRequest[];
  outcomes: Map<string, CandidateOutcome>;
}

type Order = 'as-is' | 'reversed' | 'shuffled';

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

interface DriveOptions {
  scorer?: Scorer;
  order?: Order;
  log?: RoundLog[];
  /** Called on the run between startRound and finishRound (to stop it or change its budget). */
  during?: (run: RunState, round: number) => RunState;
}

function drive(run: RunState, options: DriveOptions = {}): RunState {
  const evaluate = evaluator(options.scorer);
  let state = run;
  for (let round = 1; state.phase !== 'done'; round++) {
    const started = startRound(state);
    const outcomes = started.batches.map((b) => evaluate(b));
    options.log?.push({
      phase: started.run.phase,
      candidates: started.run.inFlight,
      verify: started.run.inFlightVerified,
      batches: started.batches,
      outcomes: new Map(outcomes.flatMap((o) => o.outcomes).map((o) => [o.id, o])),
    });
    const inFlight = options.during ? options.during(started.run, round) : started.run;
    state = finishRound(inFlight, reorder(outcomes, options.order ?? 'as-is'));
  }
  return state;
}

function result(algorithm: AlgorithmSpec, overrides: Partial<SearchSpec> = {}, options: DriveOptions = {}, model = MODEL): SearchResult {
  return drive(createRun(spec(algorithm, overrides), model), options).result!;
}

function problemsOf(make: () => unknown): string[] {
  try {
    make();
  } catch (error) {
    assert.ok(error instanceof SpecError, `expected a SpecError, got ${error}`);
    return error.problems;
  }
  assert.fail('expected the spec to be refused');
}

function assertRefused(algorithm: AlgorithmSpec, pattern: RegExp, overrides: Partial<SearchSpec> = {}): void {
  const problems = problemsOf(() => createRun(spec(algorithm, overrides), MODEL));
  assert.ok(problems.some((p) => pattern.test(p)), `no problem matches ${pattern}: ${JSON.stringify(problems)}`);
}

const score = (log: RoundLog, id: string, verifier = 'v'): number => log.outcomes.get(id)!.scores[verifier];

function searchRounds(log: RoundLog[]): RoundLog[] {
  return log.filter((r) => r.phase === 'search');
}

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
    assert.deepEqual(first[0].lineage.noise, { seed: deriveSeed(7, SeedStream.zeroOrderPivot, 0), perturbations: [] });
    assert.deepEqual(first[0].lineage.ops, [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0, solver: 'heun', steps: 10 } }]);

    let pivot = { candidate: first[0], score: score(rounds[0], first[0].id) };
    let moves = 0;
    let stays = 0;
    rounds.slice(1).forEach((round, iteration) => {
      assert.equal(round.candidates.length, N);
      const perturbationSeeds = new Set<number>();
      for (const [j, c] of round.candidates.entries()) {
        const base = pivot.candidate.lineage.noise;
        assert.equal(c.lineage.noise.seed, base.seed, 'a neighbour keeps the pivot seed');
        assert.deepEqual(c.lineage.noise.perturbations.slice(0, -1), base.perturbations, "a neighbour extends the pivot's perturbations");
        const added = c.lineage.noise.perturbations.at(-1)!;
        assert.deepEqual(added, { seed: deriveSeed(7, SeedStream.zeroOrderNeighbour, iteration, j), cosine: T });
        perturbationSeeds.add(added.seed);
        assert.deepEqual(c.lineage.ops, first[0].lineage.ops);
        assert.equal(c.scoreXpred, false);
      }
      assert.equal(perturbationSeeds.size, N, 'distinct neighbours');
      const bestNeighbour = round.candidates
        .map((candidate) => ({ candidate, score: score(round, candidate.id) }))
        .reduce((a, b) => (b.score > a.score ? b : a));
      if (bestNeighbour.score > pivot.score) {
        pivot = bestNeighbour;
        moves++;
      } else {
        stays++;
      }
    });
    assert.ok(moves > 0, 'the walk moved at least once');
    assert.ok(stays > 0, 'the walk stayed put at least once (pick another seed if the fake scores change)');
    assert.deepEqual(done.best.noise, pivot.candidate.lineage.noise);
    assert.equal(done.best.searchScore, pivot.score);
    assert.equal(done.best.score, pivot.score, 'the final generation of the same noise scores the same');
    assert.equal(done.nfe.total, GEN * (2 + 6 * N));
  });

  it('with restart, starts from a fresh pivot when no neighbour beats the pivot, and the winner is the best of all starts', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'zero-order', n: 2, t: T, restart: true }, { budgetNfe: GEN * 60 }, { log });
    const rounds = searchRounds(log);
    let restarts = 0;
    let pivot: { candidate: Candidate; score: number } | null = null;
    const champions: number[] = [];
    for (const round of rounds) {
      const scored = round.candidates.map((candidate) => ({ candidate, score: score(round, candidate.id) }));
      if (pivot === null) {
        assert.equal(round.candidates.length, 1, 'a (re)start proposes a lone pivot');
        assert.deepEqual(round.candidates[0].lineage.noise, { seed: deriveSeed(7, SeedStream.zeroOrderPivot, restarts), perturbations: [] });
        assert.equal(round.candidates[0].id, `zo-pivot-${restarts}`);
        pivot = scored[0];
        continue;
      }
      for (const c of round.candidates) assert.equal(c.lineage.noise.seed, pivot.candidate.lineage.noise.seed);
      const best = scored.reduce((a, b) => (b.score > a.score ? b : a));
      if (best.score > pivot.score) {
        pivot = best;
      } else {
        champions.push(pivot.score);
        pivot = null;
        restarts++;
      }
    }
    assert.ok(restarts >= 2, `only ${restarts} restarts; the test wants a few`);
    const pivotSeeds = new Set(rounds.filter((r) => r.candidates.length === 1 && r.candidates[0].id.startsWith('zo-pivot')).map((r) => r.candidates[0].lineage.noise.seed));
    assert.equal(pivotSeeds.size, restarts + (pivot ? 1 : 0), 'every start has a new base seed');
    const all = [...champions, ...(pivot ? [pivot.score] : [])];
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
        assert.ok(done.nfe.total <= budgetNfe);
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
    const expected = 4 * 20 + 3 * 32 * 3 + 32 * 1;
    assert.equal(expected, 400);
    const run = createRun(spec(PRESET, { budgetNfe: 400 }), MODEL);
    const { name: _name, ...resolved } = PRESET;
    assert.equal(pathsCost(run.plan, resolved), expected);
    const done = drive(run).result!;
    assert.deepEqual(done.nfe, { search: 400, final: 0, total: 400, executed: 400 });
    assert.equal(done.candidates, 4 + 4 * 32);
    assert.equal(done.rounds, 5);
    assert.equal(result({ name: 'paths' }, { budgetNfe: 400 }).nfe.total, 400, 'with N sized by the budget, the defaults are the preset');
    assert.equal(result({ name: 'paths' }, { budgetNfe: 399 }).candidates, 3 + 3 * 32, 'N is as many paths as the budget pays for');
  });

  it('starts with N unverified states at sigma_start, then extends the kept lineages with renoise and a backward solve, keeping the top N', () => {
    const log: RoundLog[] = [];
    const done = drive(createRun(spec(PRESET, { budgetNfe: 400 }), MODEL), { log }).result!;
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 5);

    const initial = rounds[0];
    assert.equal(initial.verify, false);
    for (const batch of initial.batches) assert.deepEqual(batch.verifiers, []);
    assert.equal(initial.candidates.length, 4);
    initial.candidates.forEach((c, i) => {
      assert.deepEqual(c.lineage.noise, { seed: deriveSeed(7, SeedStream.pathsNoise, i), perturbations: [] });
      assert.deepEqual(c.lineage.ops, [{ solve: { sigmaFrom: SIGMA_MAX, sigmaTo: 0.11, solver: 'heun', steps: 10 } }]);
      assert.equal(c.scoreXpred, false);
      assert.ok(!c.paidOps);
    });

    let kept: Candidate[] = initial.candidates;
    let sigma = 0.11;
    const sigmas: number[] = [];
    for (const [r, round] of rounds.slice(1).entries()) {
      const raw = sigma + 0.78 - 0.81;
      const target = raw < SIGMA_MIN ? 0 : raw;
      sigmas.push(target);
      assert.equal(round.verify, true);
      for (const batch of round.batches) assert.deepEqual(batch.verifiers, ['v']);
      assert.equal(round.candidates.length, kept.length * 8);
      round.candidates.forEach((c, index) => {
        const b = Math.floor(index / 8);
        const j = index % 8;
        const parent = kept[b];
        assert.deepEqual(c.lineage.noise, parent.lineage.noise);
        const expectedOps: Op[] = [
          ...parent.lineage.ops,
          { renoise: { sigmaFrom: sigma, sigmaTo: sigma + 0.78, seed: deriveSeed(7, SeedStream.pathsRenoise, r, b, j) } },
          { solve: { sigmaFrom: sigma + 0.78, sigmaTo: target, solver: 'heun', steps: 1 } },
        ];
        assert.deepEqual(c.lineage.ops, expectedOps);
        assert.equal(c.paidOps, parent.lineage.ops.length);
        assert.equal(c.scoreXpred, target > 0);
        assert.equal(candidateNfe(c, SIGMA_MAX), target > 0 ? 3 : 1);
      });
      kept = [...round.candidates]
        .map((candidate, order) => ({ candidate, order, score: score(round, candidate.id) }))
        .sort((x, y) => y.score - x.score || x.order - y.order)
        .slice(0, 4)
        .map((x) => x.candidate);
      sigma = target;
    }
    assert.equal(sigmas.length, 4);
    assert.ok(sigmas.slice(0, 3).every((s) => s > 0));
    assert.equal(sigmas[3], 0, 'the walk ends at sigma = 0');
    assert.equal(done.best.candidateId, kept[0].id);
    assert.equal(done.best.searchScore, score(rounds[4], kept[0].id));
    assert.deepEqual(done.best.scores, { v: score(rounds[4], kept[0].id) }, 'no final generation: the winner is a finished sample');
    assert.equal(lastSigma(kept[0].lineage, SIGMA_MAX), 0);
    assert.ok(!log.some((r) => r.phase === 'final'));
  });

  it('takes a target below sigma_min to 0 and ends there', () => {
    const log: RoundLog[] = [];
    // 0.031 -> 0.001, which is below sigma_min = 0.002: the second round solves to 0.
    const done = result({ ...PRESET, n: 2, m: 3, sigmaStart: 0.031 }, { budgetNfe: 1000 }, { log });
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 2);
    for (const c of rounds[1].candidates) {
      assert.deepEqual(c.lineage.ops.at(-1), { solve: { sigmaFrom: 0.031 + 0.78, sigmaTo: 0, solver: 'heun', steps: 1 } });
      assert.equal(c.scoreXpred, false);
    }
    assert.equal(done.nfe.total, 2 * 20 + 2 * 3 * 1);
  });

  it('refuses bad parameters and a budget below the cost, each with a message', () => {
    assertRefused({ ...PRESET, deltaB: 0.78 }, /^deltaB: 0\.78 must be above deltaF \(0\.78\)/);
    assertRefused({ ...PRESET, deltaB: 0.5 }, /^deltaB: 0\.5 must be above deltaF \(0\.78\)/);
    assertRefused({ ...PRESET, sigmaStart: 0.001 }, /^sigmaStart: 0\.001 must lie inside the model's sigma range \(0\.002, 80\)/);
    assertRefused({ ...PRESET, sigmaStart: 90 }, /^sigmaStart: 90 must lie inside/);
    assertRefused({ ...PRESET, n: 0 }, /^n: 0 must be a whole number of at least 1/);
    assertRefused({ ...PRESET, m: 0 }, /^m: 0 must be a whole number of at least 1/);
    assertRefused({ ...PRESET, backwardSteps: 0 }, /^backwardSteps: 0 must be/);
    assertRefused(PRESET, /^budget: 399 NFEs cannot pay for Paths-4 with M = 8, which costs 400 NFEs; use --budget 400 or more/, { budgetNfe: 399 });
    const both = problemsOf(() => createRun(spec({ ...PRESET, n: 0, m: 0 }), MODEL));
    assert.equal(both.length, 2, 'every problem at once');
  });
});

describe('FK steering', () => {
  const SIGMAS = karrasSigmas(10, SIGMA_MIN, SIGMA_MAX);

  /** Checks a segment's new ops walk the schedule from sigmas[from] to sigmas[to] with ancestral Euler steps. */
  function assertAncestral(ops: Op[], from: number, to: number): void {
    let sigma = SIGMAS[from];
    let step = from;
    let solves = 0;
    for (const op of ops) {
      if ('solve' in op) {
        assert.equal(op.solve.sigmaFrom, sigma);
        assert.equal(op.solve.solver, 'euler');
        assert.equal(op.solve.steps, 1);
        assert.ok(op.solve.sigmaTo <= SIGMAS[step + 1] + 1e-12);
        sigma = op.solve.sigmaTo;
        solves++;
        step++;
        if (sigma === SIGMAS[step]) continue; // a deterministic step
      } else {
        assert.equal(op.renoise.sigmaFrom, sigma, 'a renoise follows the Euler step to sigma_down');
        assert.ok(op.renoise.sigmaTo > op.renoise.sigmaFrom);
        assert.equal(op.renoise.sigmaTo, SIGMAS[step]);
        sigma = op.renoise.sigmaTo;
      }
    }
    assert.equal(solves, to - from, 'one Euler step per schedule step');
    assert.equal(sigma, SIGMAS[to]);
  }

  it('extends every particle by resampleEvery ancestral steps of the Karras schedule, down to sigma = 0', () => {
    assert.equal(SIGMAS.length, 11);
    assert.equal(SIGMAS[0], SIGMA_MAX);
    assert.equal(SIGMAS[9], SIGMA_MIN);
    assert.equal(SIGMAS[10], 0);
    const log: RoundLog[] = [];
    const done = result({ name: 'fk', k: 4, resampleEvery: 3 }, {}, { log });
    const rounds = searchRounds(log);
    const bounds = [[0, 3], [3, 6], [6, 9], [9, 10]];
    assert.equal(rounds.length, bounds.length);
    rounds.forEach((round, r) => {
      assert.equal(round.candidates.length, 4);
      for (const [i, c] of round.candidates.entries()) {
        assert.equal(c.id, `fk-${r}-${i}`);
        if (r === 0) assert.equal(c.lineage.noise.seed, deriveSeed(7, SeedStream.fkNoise, i));
        if (r === 0) {
          assert.equal(c.paidOps ?? 0, 0);
        } else {
          const prefix = JSON.stringify(c.lineage.ops.slice(0, c.paidOps));
          assert.ok(rounds[r - 1].candidates.some((p) => JSON.stringify(p.lineage.ops) === prefix), 'extends a particle of the previous segment');
        }
        assertAncestral(c.lineage.ops.slice(c.paidOps ?? 0), bounds[r][0], bounds[r][1]);
        assert.equal(c.scoreXpred, SIGMAS[bounds[r][1]] > 0);
      }
    });
    assert.equal(lastSigma(rounds[3].candidates[0].lineage, SIGMA_MAX), 0);
    assert.ok(!log.some((r) => r.phase === 'final'), 'the winner is a finished sample');
    assert.ok(Number.isFinite(done.best.searchScore));
  });

  it('counts K * steps + K per resampling point above sigma = 0, as fkCost does', () => {
    const cases = [
      { k: 4, resampleEvery: 3, steps: 10, expected: 4 * 10 + 4 * 3 },
      { k: 8, resampleEvery: 2, steps: 10, expected: 8 * 10 + 8 * 4 },
      { k: 3, resampleEvery: 1, steps: 5, expected: 3 * 5 + 3 * 4 },
      { k: 5, resampleEvery: 20, steps: 10, expected: 5 * 10 },
    ];
    for (const { k, resampleEvery, steps, expected } of cases) {
      const run = createRun(spec({ name: 'fk', k, resampleEvery }, { searchSampler: { steps } }), MODEL);
      assert.equal(fkCost(run.plan, { k, resampleEvery, lambda: 10, potential: 'max', resampling: 'adaptive' }), expected);
      const done = drive(run).result!;
      assert.deepEqual(done.nfe, { search: expected, final: 0, total: expected, executed: expected }, `k ${k} every ${resampleEvery} of ${steps}`);
    }
    assertRefused({ name: 'fk', k: 4, resampleEvery: 3 }, /^budget: 51 NFEs cannot pay for FK steering with k = 4 particles over 10 steps, which costs 52 NFEs/, { budgetNfe: 51 });
  });

  it('resampling hands the high-reward particles to the next segment', () => {
    const favoured = new Set([0, 1].map((i) => deriveSeed(7, SeedStream.fkNoise, i)));
    const scorer: Scorer = (c) => (favoured.has(c.lineage.noise.seed) ? 1 : 0);
    for (const resampling of ['multinomial', 'adaptive'] as const) {
      const log: RoundLog[] = [];
      const run = drive(createRun(spec({ name: 'fk', k: 6, lambda: 50, resampling, resampleEvery: 3 }), MODEL), { log, scorer });
      const rounds = searchRounds(log);
      const firstOps = new Map(rounds[0].candidates.map((c) => [c.lineage.noise.seed, JSON.stringify(c.lineage.ops)]));
      for (const c of rounds[1].candidates) {
        assert.ok(favoured.has(c.lineage.noise.seed), `${resampling}: particle ${c.id} descends from an unfavoured particle`);
        assert.equal(JSON.stringify(c.lineage.ops.slice(0, c.paidOps)), firstOps.get(c.lineage.noise.seed), 'shares the favoured lineage as its prefix');
      }
      const parents = new Set(rounds[1].candidates.map((c) => JSON.stringify(c.lineage.ops.slice(0, c.paidOps))));
      assert.ok(parents.size < 6, 'high-reward particles were duplicated');
      assert.ok(favoured.has(run.result!.best.noise.seed));
      assert.equal(run.result!.best.searchScore, 1);
      assert.ok((run.algorithmState as { resamplings: number }).resamplings >= 1);
    }
  });

  it('adaptive resampling leaves equal-reward particles alone (ESS = K); multinomial resamples at every point', () => {
    const flat: Scorer = () => 0.5;
    const log: RoundLog[] = [];
    const adaptive = drive(createRun(spec({ name: 'fk', k: 5, resampling: 'adaptive', resampleEvery: 3 }), MODEL), { log, scorer: flat });
    assert.equal((adaptive.algorithmState as { resamplings: number }).resamplings, 0);
    const rounds = searchRounds(log);
    for (let r = 1; r < rounds.length; r++) {
      rounds[r].candidates.forEach((c, i) => {
        assert.deepEqual(c.lineage.ops.slice(0, c.paidOps), rounds[r - 1].candidates[i].lineage.ops, `particle ${i} keeps its own lineage`);
      });
    }
    const multinomial = drive(createRun(spec({ name: 'fk', k: 5, resampling: 'multinomial', resampleEvery: 3 }), MODEL), { scorer: flat });
    assert.equal((multinomial.algorithmState as { resamplings: number }).resamplings, 3);
  });

  it('runs every potential and refuses an unknown one', () => {
    for (const potential of ['max', 'difference', 'sum'] as const) {
      const done = result({ name: 'fk', k: 4, potential, resampling: 'multinomial' });
      assert.equal(done.nfe.total, 4 * 10 + 4 * 4, potential);
      assert.ok(done.best.searchScore >= 0 && done.best.searchScore < 1, potential);
    }
    assertRefused({ name: 'fk', potential: 'min' as never }, /^potential: "min" is not one of max, difference, sum/);
    assertRefused({ name: 'fk', resampling: 'systematic' as never }, /^resampling: "systematic" is not one of multinomial, adaptive/);
    assertRefused({ name: 'fk', k: 0 }, /^k: 0 must be a whole number of at least 1/);
    assertRefused({ name: 'fk', lambda: -1 }, /^lambda: -1 must be a finite number >= 0/);
  });
});

describe('verifier ensembles', () => {
  it('random search picks the best mean rank and reports every verifier score', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'random', n: 30 }, { verifiers: ['a', 'b'] }, { log });
    const round = searchRounds(log);
    const candidates = round.flatMap((r) => r.candidates);
    const outcomes = new Map(round.flatMap((r) => [...r.outcomes]));
    const ranksA = averagedRanks(candidates.map((c) => outcomes.get(c.id)!.scores.a));
    const ranksB = averagedRanks(candidates.map((c) => outcomes.get(c.id)!.scores.b));
    const mean = ranksA.map((r, i) => (r + ranksB[i]) / 2);
    const winner = mean.indexOf(Math.max(...mean));
    assert.equal(done.best.candidateId, candidates[winner].id);
    assert.equal(done.best.searchScore, mean[winner]);
    assert.equal(done.best.score, mean[winner], 'with an ensemble the score is the mean rank');
    assert.deepEqual(Object.keys(done.best.scores).sort(), ['a', 'b']);
    assert.deepEqual(done.best.scores, outcomes.get(candidates[winner].id)!.scores, 'the final generation of the winner scores as it did');
    assert.deepEqual(Object.keys(done.verifierCosts).sort(), ['a', 'b']);
    // The fake verifiers disagree, so the mean rank is not just either one's best.
    const bestA = ranksA.indexOf(30);
    const bestB = ranksB.indexOf(30);
    assert.ok(bestA !== bestB, 'the two fake verifiers should disagree on the best');
  });
});

describe('determinism', () => {
  const algorithms: Array<[AlgorithmSpec, number]> = [
    [{ name: 'random', roundSize: 5 }, 1000],
    [{ name: 'zero-order', n: 3, t: 0.7, restart: true }, 1000],
    [{ name: 'paths', n: 3, m: 4 }, 1000],
    [{ name: 'fk', k: 6, resampling: 'multinomial', potential: 'difference' }, 1000],
    [{ name: 'fk', k: 6, resampling: 'adaptive', lambda: 30 }, 1000],
  ];
  for (const [algorithm, budgetNfe] of algorithms) {
    it(`${JSON.stringify(algorithm)}: the same best and NFEs whatever the batch size and outcome order`, () => {
      const reference = result(algorithm, { budgetNfe });
      for (const maxBatch of [1, 3, 64]) {
        for (const order of ['as-is', 'reversed', 'shuffled'] as const) {
          const again = result(algorithm, { budgetNfe }, { order }, { ...MODEL, maxBatch });
          assert.deepEqual(again.best, reference.best, `maxBatch ${maxBatch}, ${order}`);
          assert.deepEqual(again.nfe, reference.nfe, `maxBatch ${maxBatch}, ${order}`);
          assert.equal(again.candidates, reference.candidates);
        }
      }
      assert.notDeepEqual(result(algorithm, { budgetNfe, seed: 8 }).best, reference.best, 'another seed gives another search');
    });
  }
});

describe('stop and budget changes', () => {
  it('requestStop ends a random search after the round in flight, with the best so far', () => {
    const log: RoundLog[] = [];
    const done = result({ name: 'random', roundSize: 4 }, { budgetNfe: 2000 }, { log, during: (run, round) => (round === 2 ? requestStop(run) : run) });
    const rounds = searchRounds(log);
    assert.equal(rounds.length, 2);
    assert.equal(done.stopped, true);
    assert.equal(done.candidates, 8);
    assert.deepEqual(done.nfe, { search: 8 * GEN, final: GEN, total: 9 * GEN, executed: 9 * GEN });
    const all = rounds.flatMap((r) => r.candidates.map((c) => ({ c, s: score(r, c.id) })));
    const best = all.reduce((a, b) => (b.s > a.s ? b : a));
    assert.equal(done.best.candidateId, best.c.id);
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

  it(
    'setBudget raises the budget of a random search without n, which then evaluates more candidates',
    () => {
      const raised = result({ name: 'random', roundSize: 2 }, { budgetNfe: 200 }, { during: (run, round) => (round === 1 ? setBudget(run, 2000) : run) });
      assert.equal(raised.candidates, Math.floor((2000 - GEN) / GEN));
    },
  );

  it('budgetRefusal refuses a budget below what is spent or committed, and anything after the end', () => {
    let run = createRun(spec({ name: 'random', roundSize: 4 }, { budgetNfe: 1000 }), MODEL);
    const first = startRound(run);
    run = finishRound(first.run, first.batches.map(evaluator()));
    const second = startRound(run);
    // 4 spent, 4 in flight, the final generation reserved.
    const floor = 4 * GEN + 4 * GEN + GEN;
    assert.equal(budgetRefusal(second.run, floor), null);
    assert.match(budgetRefusal(second.run, floor - 1)!, new RegExp(`^budget: ${floor - 1} NFEs is below what is spent or committed \\(${floor} NFEs, the final generation included\\)`));
    assert.throws(() => setBudget(second.run, floor - 1), (error: SpecError) => error instanceof SpecError && /below what is spent/.test(error.problems[0]));
    assert.match(budgetRefusal(second.run, 1.5)!, /^budget: 1\.5 must be a whole number of NFEs/);
    assert.match(budgetRefusal(second.run, 0)!, /^budget: 0 must be a whole number/);
    const lowered = setBudget(second.run, floor);
    const done = drive(finishRound(lowered, second.batches.map(evaluator())));
    assert.equal(done.result!.candidates, 8);
    assert.equal(done.result!.nfe.total, floor);
    assert.match(budgetRefusal(done, 5000)!, /^budget: the search is already done/);
  });

  for (const algorithm of [{ name: 'paths', n: 2, m: 3 }, { name: 'fk', k: 4 }] as AlgorithmSpec[]) {
    it(
      `${algorithm.name}: a budget lowered to what is spent is never exceeded`,
      () => {
        const done = result(algorithm, { budgetNfe: 1000 }, { during: (run, round) => (round === 2 ? setBudget(run, budgetRefusalFloor(run)) : run) });
        assert.ok(done.nfe.total <= done.budget.nfe, `spent ${done.nfe.total} of a budget of ${done.budget.nfe}`);
      },
    );
  }

  it('a paths search stopped during its first (unverified) round says so, without blaming failed candidates', () => {
    assert.throws(
      () => result({ name: 'paths', n: 2, m: 3 }, {}, { during: (run, round) => (round === 1 ? requestStop(run) : run) }),
      /stopped before any candidate was scored/,
    );
  });
});

/** The lowest budget budgetRefusal accepts for a run with a round in flight (paths and FK keep 1 NFE to finish). */
function budgetRefusalFloor(run: RunState): number {
  return run.nfeSearch + run.inFlight.reduce((sum, c) => sum + candidateNfe(c, SIGMA_MAX), 0) + Math.max(run.plan.finalNfe, 1);
}

// The paper's scaling behaviour on a real model server: for every search algorithm, the mean best
// verifier score over a fixed list of seeds rises with the compute the search is given (Ma et al. 2025,
// Fig. 3 and 4; Singhal et al. 2025 for FK steering's particle count). The model server hosts the exact
// Gaussian-mixture diffusion model; the verifier is gmm-classifier (log p(class | x), <= 0) for class 3.
// Everything is deterministic (derived seeds, counter-based noise on the server), so the margins below are
// the same on every run; they were checked on several seed lists to make sure they are not seed luck.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Fleet } from '../src/fleet/client';
import { runLocalSearch } from '../src/local';
import type { SearchResult } from '../src/search/run';
import type { AlgorithmSpec, SearchSpec } from '../src/search/spec';
import { stopServer, withModelServer } from './helpers';

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];

interface Level {
  label: string;
  algorithm: AlgorithmSpec;
  budgetNfe: number;
  /** The NFEs each search spends, when the level fixes it exactly. */
  spends?: number;
}

function spec(algorithm: AlgorithmSpec, budgetNfe: number, seed: number): SearchSpec {
  return { model: 'gmm', condition: { classLabel: 3 }, algorithm, verifiers: ['gmm-classifier'], budgetNfe, seed };
}

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

describe('scaling: the mean best score rises with the compute (real model server, gmm-classifier, class 3)', { timeout: 120_000 }, () => {
  let server: Awaited<ReturnType<typeof withModelServer>>;
  let fleet: Fleet;

  before(async () => {
    server = await withModelServer();
    fleet = new Fleet([server.address], { callDeadlineMs: 30_000 });
  });

  after(async () => {
    fleet?.close();
    await stopServer(server);
  });

  /** Runs every level over every seed; checks each search and returns the best scores, level by level. */
  async function sweep(levels: Level[]): Promise<number[][]> {
    const table: number[][] = [];
    for (const level of levels) {
      const results: SearchResult[] = [];
      for (const seed of SEEDS) results.push(await runLocalSearch(spec(level.algorithm, level.budgetNfe, seed), fleet));
      for (const result of results) {
        assert.equal(result.failedCandidates, 0, level.label);
        assert.ok(result.nfe.total <= level.budgetNfe, `${level.label}: spent ${result.nfe.total} of ${level.budgetNfe}`);
        if (level.spends !== undefined) assert.equal(result.nfe.total, level.spends, level.label);
        assert.ok(Number.isFinite(result.best.searchScore) && result.best.searchScore <= 0, `${level.label}: a log posterior, got ${result.best.searchScore}`);
        assert.ok(Number.isFinite(result.best.score) && result.best.score <= 0, level.label);
      }
      table.push(results.map((r) => r.best.searchScore));
    }
    return table;
  }

  function assertRising(levels: Level[], table: number[][]): void {
    const means = table.map(mean);
    const report = levels.map((l, i) => `${l.label}: ${means[i].toFixed(4)}`).join(', ');
    for (let i = 1; i < means.length; i++) {
      assert.ok(means[i] > means[i - 1], `the mean best score should rise with the compute: ${report}`);
    }
  }

  it('random search: more noises, better best (budgets 57, 190, 950 NFEs)', async () => {
    const levels: Level[] = [57, 190, 950].map((budgetNfe) => ({ label: `budget ${budgetNfe}`, algorithm: { name: 'random' }, budgetNfe, spends: budgetNfe }));
    const table = await sweep(levels);
    assertRising(levels, table);
    // The candidates of a smaller budget are the first ones of a larger budget, so no seed gets worse.
    for (let i = 1; i < table.length; i++) {
      SEEDS.forEach((seed, s) => assert.ok(table[i][s] >= table[i - 1][s] - 1e-9, `seed ${seed}: ${table[i - 1][s]} -> ${table[i][s]}`));
    }
  });

  it('zero-order search: more iterations, better best (budgets 57, 190, 950 NFEs)', async () => {
    const levels: Level[] = [57, 190, 950].map((budgetNfe) => ({ label: `budget ${budgetNfe}`, algorithm: { name: 'zero-order' }, budgetNfe, spends: budgetNfe }));
    assertRising(levels, await sweep(levels));
  });

  it('search over paths: more paths and perturbations, better best (N=1, M=2 vs N=4, M=8)', async () => {
    // Paths-1, M = 2 costs 1 * 20 + 3 * (2 * 3) + 2 * 1 = 40 NFEs; Paths-4, M = 8 costs 400.
    const levels: Level[] = [
      { label: 'N=1 M=2', algorithm: { name: 'paths', n: 1, m: 2 }, budgetNfe: 400, spends: 40 },
      { label: 'N=4 M=8', algorithm: { name: 'paths', n: 4, m: 8 }, budgetNfe: 400, spends: 400 },
    ];
    assertRising(levels, await sweep(levels));
  });

  it('FK steering: more particles, better best (k = 1, 4, 16)', async () => {
    // k * 10 Euler steps + k x-predictions at each of the 4 resampling points above sigma = 0.
    const levels: Level[] = [1, 4, 16].map((k) => ({ label: `k=${k}`, algorithm: { name: 'fk', k }, budgetNfe: 14 * k, spends: 14 * k }));
    assertRising(levels, await sweep(levels));
  });
});
